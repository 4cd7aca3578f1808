"""Streaming, interruption and compressed splits."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest
from airllm_rs import AutoModel
from conftest import FIXTURES

STORY = "Write a long story about a dragon who learns to paint."


def test_stream_yields_the_text_complete_returns(model):
    for prompt, chat in [
        ("The capital of the United States is", False),
        ("Say hello in three languages.", True),
    ]:
        [whole] = model.complete([prompt], chat=chat, max_new_tokens=24)
        pieces = list(model.stream(prompt, chat=chat, max_new_tokens=24))
        assert len(pieces) > 1
        assert "".join(pieces) == whole


def test_stop_strings_end_both_alike(model):
    [whole] = model.complete("Count: one, two, three,", max_new_tokens=24, stop=",")
    assert "," not in whole
    assert "".join(model.stream("Count: one, two, three,", max_new_tokens=24, stop=",")) == whole


def interrupt_soon() -> threading.Timer:
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_interrupts_a_generation_and_the_model_stays_usable(model):
    before = model.complete("Hello there", max_new_tokens=6)
    for run in (
        lambda: model.complete(STORY, max_new_tokens=4000, ignore_eos=True),
        lambda: list(model.stream(STORY, max_new_tokens=4000, ignore_eos=True)),
    ):
        interrupt_soon()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run()
        assert time.monotonic() - started < 5, "the interrupt ended the generation"
        assert model.complete("Hello there", max_new_tokens=6) == before


def test_closing_a_stream_early_frees_the_model(model):
    pieces = model.stream(STORY, max_new_tokens=4000, ignore_eos=True)
    next(pieces)
    pieces.close()
    started = time.monotonic()
    model.complete("Hello there", max_new_tokens=2)
    assert time.monotonic() - started < 10


def test_a_compressed_split_is_made_once_and_reused(smollm2, tmp_path):
    out = tmp_path / "nf4"
    first = AutoModel.from_pretrained(smollm2, compression="4bit", layer_shards_saving_path=out)
    manifest = out / "manifest.json"
    made = manifest.stat().st_mtime_ns
    answer = first.complete("The capital of the United States is", max_new_tokens=6)
    again = AutoModel.from_pretrained(smollm2, compression="4bit", layer_shards_saving_path=out)
    assert manifest.stat().st_mtime_ns == made
    assert again.path == str(out)
    assert again.complete("The capital of the United States is", max_new_tokens=6) == answer
    with pytest.raises(ValueError, match="stored otherwise"):
        AutoModel.from_pretrained(smollm2, compression="8bit", layer_shards_saving_path=out)


def test_profile_reports_the_bench_figures(model):
    report = model.profile(batch=2, prompt_tokens=8, new_tokens=4)
    assert report["batch"] == 2 and report["prompt_tokens"] == 8 and report["new_tokens"] == 4
    assert report["decode_tokens_per_s"] > 0
    assert len(report["units"]) > 2


def test_delete_original_keeps_the_split_and_the_tokenizer(tmp_path):
    source = tmp_path / "llama-gqa"
    shutil.copytree(FIXTURES / "llama-gqa", source)
    answer = AutoModel.from_pretrained(source).complete("Hello", max_new_tokens=4)
    model = AutoModel.from_pretrained(source, compression="8bit", delete_original=True)
    assert not list(source.glob("*.safetensors")), "the original weights are gone"
    assert (source / "config.json").is_file() and (source / "tokenizer.json").is_file()
    assert model.path == str(source / "airllm-split-q8_0")
    assert isinstance(model.complete("Hello", max_new_tokens=4)[0], str) and answer
    again = AutoModel.from_pretrained(source, compression="8bit")
    assert again.complete("Hello", max_new_tokens=4) == model.complete("Hello", max_new_tokens=4)


def test_profiling_mode_prints_each_layer(smollm2, capfd):
    model = AutoModel.from_pretrained(smollm2, profiling_mode=True)
    model.complete("Hello", max_new_tokens=2)
    printed = capfd.readouterr().out
    assert "compute ms" in printed and "layer" in printed
