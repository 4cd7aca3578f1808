"""Answers a JSONL file of prompts with Ray Data and airllm_rs, writing a
JSONL file of answers in the input's order.

    python ray_batch.py MODEL prompts.jsonl answers.jsonl --actors 2 --threads 1

Each input line is an object with a "prompt" field (other fields are
kept); each output line adds "answer". Without --address, Ray starts on
this machine; with --address auto (after `ray start` on each machine of a
cluster), the actors spread over the cluster.
"""

from __future__ import annotations

import argparse
import json

import ray
import ray.data
from airllm_rs.ray import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="GGUF file, Hugging Face directory, split directory or hub id")
    parser.add_argument("prompts", help="input JSONL, one {'prompt': ...} per line")
    parser.add_argument("answers", help="output JSONL")
    parser.add_argument("--address", help="a Ray cluster's address (e.g. auto); default: a local Ray")
    parser.add_argument("--actors", type=int, default=1, help="actors, each holding one model")
    parser.add_argument("--threads", type=int, default=None, help="compute threads per actor")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-memory", help="memory budget per actor, e.g. 4GB")
    parser.add_argument("--chat", action="store_true", help="apply the model's chat template")
    parser.add_argument("--temperature", type=float, default=None)
    args = parser.parse_args()

    ray.init(address=args.address)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    with open(args.prompts, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    answered = ray.data.from_items(items).map_batches(
        Predictor,
        fn_constructor_kwargs={
            "model": args.model,
            "max_new_tokens": args.max_new_tokens,
            "max_memory": args.max_memory,
            "threads": args.threads,
            "chat": args.chat,
            "temperature": args.temperature,
        },
        concurrency=args.actors,
        batch_size=args.batch_size,
        num_cpus=args.threads or 1,
    )
    with open(args.answers, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in answered.iter_rows())


if __name__ == "__main__":
    main()
