"""Does calling from Python cost anything? Times `model.complete` against
`airllm bench` on the same model and settings (a 16-token prompt, 64 new
tokens, end tokens ignored), alternating runs, and prints the medians.

    python complete_vs_bench.py MODEL AIRLLM_BINARY [--batches 1,16] [--runs 5]

`complete`'s time is its wall time from Python; bench's is its prefill plus
decode time (load excluded, as `complete` runs on an open model). The
decode rate from Python is its new tokens after the first over its time
less bench's prefill time. `model.profile` (bench's measurement, run in
this process on the same warm engine) is timed alongside, since a fresh
`airllm bench` process also pays for its first touches of memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from airllm_rs import AutoModel

PASSAGE = (
    "The river bends twice before it reaches the old mill, where the water slows and the "
    "miller's children once raced paper boats along the stone channel every summer evening."
)


def prompt_of(model, tokens: int) -> str:
    """A text that encodes to exactly `tokens` tokens."""
    ids = model.tokenizer.encode(PASSAGE)
    for cut in range(tokens, len(ids)):
        text = model.tokenizer.decode(ids[:cut], skip_special_tokens=True)
        if len(model.tokenizer.encode(text)) == tokens:
            return text
    raise SystemExit("no prefix of the passage encodes to that many tokens")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("airllm")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    model = AutoModel.from_pretrained(args.model)
    prompt = prompt_of(model, args.prompt_tokens)
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        model.complete([prompt] * batch, max_new_tokens=4, ignore_eos=True)  # warm
        python_s, bench_s, bench_prefill_s, bench_decode, profile_decode = [], [], [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            model.complete([prompt] * batch, max_new_tokens=args.new_tokens, ignore_eos=True)
            python_s.append(time.perf_counter() - started)
            out = subprocess.run(
                [
                    args.airllm,
                    "bench",
                    args.model,
                    "--prompt",
                    prompt,
                    "--batch",
                    str(batch),
                    "--new-tokens",
                    str(args.new_tokens),
                    "--json",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            report = json.loads(out.stdout)
            prefill = batch * report["prompt_tokens"] / report["prefill_tokens_per_s"]
            decode_tokens = batch * (args.new_tokens - 1)
            bench_prefill_s.append(prefill)
            bench_s.append(prefill + decode_tokens / report["decode_tokens_per_s"])
            bench_decode.append(report["decode_tokens_per_s"])
            profile = model.profile(batch=batch, prompt=prompt, new_tokens=args.new_tokens)
            profile_decode.append(profile["decode_tokens_per_s"])
        decode_tokens = batch * (args.new_tokens - 1)
        py = statistics.median(python_s)
        be = statistics.median(bench_s)
        py_decode = decode_tokens / (py - statistics.median(bench_prefill_s))
        results.append(
            {
                "batch": batch,
                "complete_s": py,
                "bench_s": be,
                "complete_over_bench_time": py / be,
                "complete_decode_tokens_per_s": py_decode,
                "bench_decode_tokens_per_s": statistics.median(bench_decode),
                "decode_ratio": py_decode / statistics.median(bench_decode),
                "profile_decode_tokens_per_s": statistics.median(profile_decode),
                "decode_ratio_to_profile": py_decode / statistics.median(profile_decode),
                "runs": args.runs,
            }
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
