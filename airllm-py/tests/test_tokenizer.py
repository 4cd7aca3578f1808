"""The tokenizer gives the ids Hugging Face's `tokenizers` gives for the
same tokenizer.json, and the chat template renders as `airllm run --chat`."""

from __future__ import annotations

import pytest
import tokenizers
from airllm_rs import AutoModel
from conftest import FIXTURES, airllm_run

TEXTS = [
    "Hello, world!",
    "The capital of the United States is Washington, D.C.",
    "  spaces,\ttabs\nand newlines  ",
    "Ünïcödé — emoji 🚀 and 中文",
    "<|im_start|>special tokens inline<|im_end|>",
]


@pytest.fixture(scope="module")
def smollm2_split(smollm2, tmp_path_factory):
    """SmolLM2 split with 8-bit compression: the split holds the
    tokenizer.json made from the GGUF's vocabulary."""
    return AutoModel.from_pretrained(
        smollm2, compression="8bit", layer_shards_saving_path=tmp_path_factory.mktemp("split") / "q8"
    )


def check_ids(model, path):
    reference = tokenizers.Tokenizer.from_file(str(path))
    for text in TEXTS:
        assert model.tokenizer.encode(text) == reference.encode(text).ids, text
        assert (
            model.tokenizer.encode(text, add_special_tokens=False)
            == reference.encode(text, add_special_tokens=False).ids
        )
        ids = reference.encode(text).ids
        assert model.tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=False)
        assert model.tokenizer.decode(ids, skip_special_tokens=True) == reference.decode(ids)


@pytest.mark.parametrize("fixture", ["llama-gqa", "qwen3-dense", "mixtral-moe"])
def test_fixture_ids_equal_tokenizers(fixture):
    model = AutoModel.from_pretrained(FIXTURES / fixture)
    check_ids(model, FIXTURES / fixture / "tokenizer.json")


def test_smollm2_ids_equal_tokenizers(smollm2_split):
    from pathlib import Path

    check_ids(smollm2_split, Path(smollm2_split.path) / "tokenizer.json")


def test_batches_pad_and_truncate(model):
    batch = model.tokenizer(["a b c d e f", "a"], padding=True, padding_side="left", return_tensors="np")
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    cut = model.tokenizer(["a b c d e f"], truncation=True, max_length=2)
    assert [len(r) for r in cut["input_ids"]] == [2]
    assert model.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)[1] == "a"


def test_chat_template_renders_as_the_cli(model, smollm2):
    question = "Name a primary colour."
    messages = [{"role": "user", "content": question}]
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and question in text
    ids = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ids == model.tokenizer.encode(text, add_special_tokens=False)
    [cli] = airllm_run(
        smollm2, "--chat", "--prompt", question, "--greedy", "--max-new-tokens", "10", "--activations", "f32"
    )
    output = model.generate([ids], max_new_tokens=10)
    assert output[0][len(ids) : len(ids) + len(cli["tokens"])] == cli["tokens"]
    assert model.chat(question, max_new_tokens=10) == cli["text"]
