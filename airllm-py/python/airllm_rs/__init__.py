"""airllm_rs: run large language models on small machines, one layer at a
time, with AirLLM's API::

    from airllm_rs import AutoModel

    model = AutoModel.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    tokens = model.tokenizer(["What is the capital of United States?"], return_tensors="np")
    output = model.generate(tokens["input_ids"], max_new_tokens=20, return_dict_in_generate=True)
    print(model.tokenizer.decode(output.sequences[0]))

Batch jobs across machines: :class:`airllm_rs.ray.Predictor` with Ray Data.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import AirLLMError, BackendError, MemoryBudgetError, ModelError, RequestError
from .model import AutoModel, GenerateOutput, Model, Sampling
from .tokenizer import BatchEncoding, Tokenizer

try:
    __version__ = version("airllm-rs")
except PackageNotFoundError:  # imported from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AirLLMError",
    "AutoModel",
    "BackendError",
    "BatchEncoding",
    "GenerateOutput",
    "MemoryBudgetError",
    "Model",
    "ModelError",
    "RequestError",
    "Sampling",
    "Tokenizer",
]
