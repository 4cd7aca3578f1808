"""`generate` over a padded batch gives each prompt the answer `airllm run
--greedy` gives it alone, whatever the input's type and padding side."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_alone, torch_or_skip

PROMPTS = ["The capital of France is", "Once upon a time, in a small village near the mountains, there lived"]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def alone(smollm2):
    return [run_alone(smollm2, p, NEW_TOKENS)["tokens"] for p in PROMPTS]


def padded(model, side: str, return_tensors):
    return model.tokenizer(PROMPTS, padding=True, padding_side=side, return_tensors=return_tensors)


def check(model, tokens, output, alone):
    ids = output.tolist() if hasattr(output, "tolist") else output
    rows = tokens["input_ids"]
    rows = rows.tolist() if hasattr(rows, "tolist") else rows
    width = len(rows[0])
    for row, sequence, answer in zip(rows, ids, alone):
        assert sequence[:width] == row, "the sequence starts with the row as given"
        new = sequence[width:]
        assert new[: len(answer)] == answer
        assert all(t == model.tokenizer.pad_token_id for t in new[len(answer) :])


@pytest.mark.parametrize("side", ["left", "right"])
def test_numpy_batch(model, alone, side):
    tokens = padded(model, side, "np")
    assert tokens["attention_mask"].sum(axis=1).tolist() != [tokens["input_ids"].shape[1]] * 2
    output = model.generate(
        tokens["input_ids"], attention_mask=tokens["attention_mask"], max_new_tokens=NEW_TOKENS
    )
    assert isinstance(output, np.ndarray) and output.dtype == np.int64
    check(model, tokens, output, alone)


@pytest.mark.parametrize("side", ["left", "right"])
def test_list_batch(model, alone, side):
    tokens = padded(model, side, None)
    output = model.generate(tokens["input_ids"], tokens["attention_mask"], max_new_tokens=NEW_TOKENS)
    assert isinstance(output, list)
    check(model, tokens, output, alone)


def test_ragged_lists_without_a_mask_are_separate_prompts(model, alone):
    rows = model.tokenizer(PROMPTS)["input_ids"]
    assert len(rows[0]) != len(rows[1])
    output = model.generate(rows, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    for row, sequence, answer in zip(rows, output.sequences, alone):
        assert sequence[: len(row) + len(answer)] == row + answer


@pytest.mark.parametrize("side", ["left", "right"])
def test_torch_batch(model, alone, side):
    torch = torch_or_skip()
    tokens = padded(model, side, "pt")
    output = model.generate(
        tokens["input_ids"], attention_mask=tokens["attention_mask"], max_new_tokens=NEW_TOKENS
    )
    assert isinstance(output, torch.Tensor) and output.dtype == torch.int64
    check(model, tokens, output, alone)


def test_sampling_follows_the_seed(model):
    ids = model.tokenizer(["The weather today"], return_tensors="np")["input_ids"]
    first = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.0, seed=7)
    again = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=1.0, seed=7)
    assert first.tolist() == again.tolist()
