"""Ray Data with two actors answers every prompt as `airllm run` does
alone, none lost or duplicated, in the dataset's order."""

from __future__ import annotations

import ray
import ray.data
from airllm_rs.ray import Predictor
from conftest import run_alone

NEW_TOKENS = 6
SUBJECTS = ["the sea", "a robot", "bread", "the moon", "winter", "a violin", "maps", "tea"]


def prompts() -> list[str]:
    return [
        f"Prompt {i}: a sentence about {SUBJECTS[i % len(SUBJECTS)]}{' and more' * (i % 5)}:"
        for i in range(40)
    ]


def test_two_actors_answer_every_prompt_in_order(smollm2):
    items = prompts()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        ds = ray.data.from_items([{"prompt": p} for p in items]).map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model": str(smollm2),
                "max_new_tokens": NEW_TOKENS,
                "threads": 1,
                "activations": "f32",
            },
            concurrency=2,
            batch_size=4,
            num_cpus=1,
        )
        rows = ds.take_all()
    finally:
        ray.shutdown()
    assert [r["prompt"] for r in rows] == items, "every prompt once, in order"
    for row in rows:
        assert row["answer"] == run_alone(smollm2, row["prompt"], NEW_TOKENS)["text"], row["prompt"]
