"""Type stubs of the extension module (the engine); use the names
``airllm_rs`` exports instead."""

from collections.abc import Iterator, Sequence
from typing import Optional, TypedDict, Union

class Settings(TypedDict):
    max_new_tokens: Optional[int]
    greedy: bool
    temperature: Optional[float]
    top_k: Optional[int]
    top_p: Optional[float]
    repetition_penalty: Optional[float]
    seed: int
    eos_token_id: Optional[list[int]]
    ignore_eos: bool
    stop: list[str]

class Model:
    """A model opened on its device, with its tokenizer and chat template."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        max_memory: Union[int, str, None] = None,
        max_host_memory: Union[int, str, None] = None,
        dtype: Optional[str] = None,
        threads: Optional[int] = None,
        prefetch: Optional[int] = None,
        prefill_chunk: Optional[int] = None,
        activations: Optional[str] = None,
        verify: bool = False,
        expert_cache: bool = True,
        hf_token: Optional[str] = None,
        profiling: bool = False,
    ) -> None: ...
    @property
    def path(self) -> str:
        """The model's local path (a hub id resolved to its snapshot)."""
    @property
    def config_json(self) -> str:
        """config.json as JSON text."""
    def generation_config_json(self) -> str:
        """generation_config.json as JSON text (``null`` when absent)."""
    @property
    def has_tokenizer(self) -> bool:
        """Whether the model has a tokenizer."""
    @property
    def has_chat_template(self) -> bool:
        """Whether the model has a chat template."""
    def encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text."""
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``."""
    def token_to_id(self, token: str) -> Optional[int]:
        """The id of ``token``, if the vocabulary has it."""
    def id_to_token(self, id: int) -> Optional[str]:
        """The token of ``id``, if there is one."""
    def vocab_size(self) -> int:
        """The vocabulary size, added tokens included."""
    def render_chat(self, messages_json: str, add_generation_prompt: bool) -> str:
        """The chat template rendered over a JSON list of messages."""
    def generate(
        self, prompts: Sequence[Sequence[int]], settings: Settings
    ) -> list[tuple[list[int], Optional[str], str]]:
        """Per prompt: new token ids, their text (None without a tokenizer)
        and why it ended (eos, length, stop or context)."""
    def stream(self, prompt: Sequence[int], settings: Settings) -> TextPieces:
        """Generates for one prompt, yielding its text as it is decoded."""
    def profile(
        self, batch: int, prompt_len: int, new_tokens: int, prompt: Optional[Sequence[int]] = None
    ) -> str:
        """``airllm bench --json``'s report on the open model, as JSON text."""

class TextPieces(Iterator[str]):
    """The text of one streamed generation, piece by piece."""

    def __iter__(self) -> TextPieces: ...
    def __next__(self) -> str: ...
    def close(self) -> None:
        """Ends the generation at its next token."""

def split_model(
    model: str, compression: str, out: Optional[str] = None, hf_token: Optional[str] = None
) -> tuple[str, str]:
    """Splits ``model`` with ``compression`` unless ``out`` already holds
    that split; returns (the split's path, the model's local path)."""
