"""Ray Data's cost and gain on one machine: the same prompts answered by
2 actors of 1 thread, by 1 actor of 2 threads, and by one model called
directly (no Ray), each generating a fixed number of tokens per prompt
(end tokens ignored). Prints tokens/s of each, Ray's start-up excluded
(the actors load their model inside the timed run, as a job does).

    python ray_actors.py MODEL [--prompts 200] [--new-tokens 32] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import time

import ray
import ray.data
from airllm_rs import AutoModel
from airllm_rs.ray import Predictor

SUBJECTS = ["the sea", "a robot", "bread", "the moon", "winter", "a violin", "maps", "tea"]


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about {SUBJECTS[i % len(SUBJECTS)]} (note {i}):" for i in range(n)]


def with_ray(model: str, items: list[str], actors: int, threads: int, args) -> float:
    started = time.perf_counter()
    rows = (
        ray.data.from_items([{"prompt": p} for p in items])
        .map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model": model,
                "max_new_tokens": args.new_tokens,
                "threads": threads,
                "ignore_eos": True,
            },
            concurrency=actors,
            batch_size=args.batch_size,
            num_cpus=threads,
        )
        .take_all()
    )
    assert len(rows) == len(items)
    return time.perf_counter() - started


def direct(model: str, items: list[str], args) -> float:
    started = time.perf_counter()
    m = AutoModel.from_pretrained(model, threads=2)
    for i in range(0, len(items), args.batch_size):
        m.complete(items[i : i + args.batch_size], max_new_tokens=args.new_tokens, ignore_eos=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    items = prompts(args.prompts)
    tokens = args.prompts * args.new_tokens
    results = {"prompts": args.prompts, "new_tokens_each": args.new_tokens, "batch_size": args.batch_size}
    results["direct_1_model_2_threads_tokens_per_s"] = tokens / direct(args.model, items, args)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    with_ray(args.model, items[:4], 1, 1, args)  # Ray's own start-up, untimed
    results["ray_2_actors_1_thread_tokens_per_s"] = tokens / with_ray(args.model, items, 2, 1, args)
    results["ray_1_actor_2_threads_tokens_per_s"] = tokens / with_ray(args.model, items, 1, 2, args)
    ray.shutdown()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
