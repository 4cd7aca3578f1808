"""AirLLM's README example, with only the import and the model path
changed, runs on SmolLM2."""

from __future__ import annotations

import pytest
from conftest import torch_or_skip


def airllm_readme_example(model_path, return_tensors: str, to_device) -> str:
    # -- AirLLM's README, import and path changed --
    from airllm_rs import AutoModel

    MAX_LENGTH = 128
    model = AutoModel.from_pretrained(model_path)

    input_text = [
        "What is the capital of United States?",
        # 'I like',
    ]

    input_tokens = model.tokenizer(
        input_text,
        return_tensors=return_tensors,
        return_attention_mask=False,
        truncation=True,
        max_length=MAX_LENGTH,
        padding=False,
    )

    generation_output = model.generate(
        to_device(input_tokens["input_ids"]), max_new_tokens=20, use_cache=True, return_dict_in_generate=True
    )

    output = model.tokenizer.decode(generation_output.sequences[0])

    print(output)
    # -- end of the example --
    return output


def test_the_example_with_numpy(smollm2, capsys):
    output = airllm_readme_example(smollm2, "np", lambda ids: ids)
    # SmolLM2-Instruct ends this bare question at once with its end-of-turn token.
    assert output.startswith("What is the capital of United States?")
    assert output == capsys.readouterr().out.rstrip("\n")


def test_the_example_as_written_with_torch(smollm2, capsys):
    torch = torch_or_skip()
    to_device = (lambda ids: ids.cuda()) if torch.cuda.is_available() else (lambda ids: ids)
    output = airllm_readme_example(smollm2, "pt", to_device)
    assert output.startswith("What is the capital of United States?")


@pytest.mark.parametrize("return_tensors", ["np", None])
def test_a_completion_prompt_gives_washington(model, return_tensors):
    tokens = model.tokenizer(["The capital of the United States is"], return_tensors=return_tensors)
    output = model.generate(tokens["input_ids"], max_new_tokens=8, return_dict_in_generate=True)
    text = model.tokenizer.decode(output.sequences[0], skip_special_tokens=True)
    assert text.startswith("The capital of the United States is")
    assert "Washington" in text[len("The capital of the United States is") :]
