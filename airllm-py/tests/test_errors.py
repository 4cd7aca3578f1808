"""Each kind of failure raises its own exception, carrying the engine's
named error."""

from __future__ import annotations

import pytest
from airllm_rs import AirLLMError, AutoModel, MemoryBudgetError, ModelError, RequestError


def test_a_missing_path_is_a_model_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="no-such-model") as raised:
        AutoModel.from_pretrained(missing)
    assert isinstance(raised.value, AirLLMError)


def test_a_bad_argument_is_a_request_error(model, smollm2):
    with pytest.raises(RequestError, match="temperature"):
        model.complete("Hello", temperature=-1.0)
    with pytest.raises(RequestError, match="max_memory"):
        AutoModel.from_pretrained(smollm2, max_memory="lots")
    with pytest.raises(RequestError, match="device"):
        AutoModel.from_pretrained(smollm2, device="tpu")
    with pytest.raises(RequestError, match="max_host_memory"):
        AutoModel.from_pretrained(smollm2, max_host_memory="lots")
    with pytest.raises(RequestError, match="dtype"):
        AutoModel.from_pretrained(smollm2, dtype="f8")
    with pytest.raises(ValueError, match="return_tensors"):
        model.tokenizer("Hello", return_tensors="tf")


def test_an_unknown_compression_is_a_request_error(smollm2):
    with pytest.raises(RequestError, match="unknown compression '3bit'"):
        AutoModel.from_pretrained(smollm2, compression="3bit")


def test_gpu_settings_on_the_cpu_are_request_errors(smollm2):
    # The cpu computes in host memory, in f32 (its precision is
    # ``activations``).
    with pytest.raises(RequestError, match="host memory"):
        AutoModel.from_pretrained(smollm2, max_host_memory="1GiB")
    with pytest.raises(RequestError, match="dtype"):
        AutoModel.from_pretrained(smollm2, dtype="f16")


def test_a_budget_below_the_working_set_is_a_memory_budget_error(smollm2):
    model = AutoModel.from_pretrained(smollm2, max_memory="1MiB")
    with pytest.raises(MemoryBudgetError, match="memory budget of"):
        model.complete("Hello", max_new_tokens=2)


def test_a_prompt_past_the_context_is_a_request_error(model):
    ids = [[1] * (model.config["max_position_embeddings"] + 1)]
    with pytest.raises(RequestError, match="context|longer|positions"):
        model.generate(ids, max_new_tokens=1)


def test_torch_tensors_without_torch_are_a_request_error(model):
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(RequestError, match="needs torch"):
            model.tokenizer("Hello", return_tensors="pt")
    else:
        assert model.tokenizer("Hello", return_tensors="pt")["input_ids"].shape[0] == 1
