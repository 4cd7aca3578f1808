"""AirLLM's ``AutoModel`` over the airllm-rs engine, and the model it
returns: ``generate`` as transformers has it, plus ``complete``,
``stream``, ``chat`` and ``profile``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypedDict, Union

from . import _native
from ._tensors import LIST, kind_of, like, rows_of
from .errors import RequestError
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: AirLLM's compression names and the block kinds they split into.
COMPRESSIONS = {"4bit": "nf4", "8bit": "q8_0"}

#: transformers' defaults where generation_config.json says nothing.
HF_MAX_LENGTH = 20
HF_TOP_K = 50

Messages = Union[str, Sequence[dict]]


class Sampling(TypedDict, total=False):
    """The settings of :meth:`Model.complete`, :meth:`Model.stream` and
    :meth:`Model.chat`, as ``airllm run`` takes them: unset ones come from
    generation_config.json (else greedy); a ``temperature`` above 0 samples."""

    #: Most new tokens per prompt (default: generation_config's, else 128).
    max_new_tokens: Optional[int]
    #: Sampling temperature (0: the likeliest token).
    temperature: Optional[float]
    #: Nucleus sampling mass.
    top_p: Optional[float]
    #: Keep the k likeliest tokens.
    top_k: Optional[int]
    #: Penalty for repeated tokens (1: none).
    repetition_penalty: Optional[float]
    #: Random seed.
    seed: int
    #: Strings that end an answer (not included in it).
    stop: Union[str, Sequence[str], None]
    #: Keep generating past end-of-sequence tokens (benchmarks).
    ignore_eos: bool


class GenerateOutput(dict):
    """What ``generate(..., return_dict_in_generate=True)`` returns:
    ``sequences`` (prompt + answer per row) by attribute or key."""

    @property
    def sequences(self) -> Any:
        """Each row's prompt as given followed by its new tokens, finished
        rows padded with ``pad_token_id``."""
        return self["sequences"]


def _first(value: Any) -> Optional[int]:
    """The first id of an id or list of ids."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _ids(value: Any) -> Optional[list[int]]:
    """An id or list of ids as a list (None stays None)."""
    if value is None:
        return None
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class Model:
    """A model opened by :meth:`AutoModel.from_pretrained`. One engine
    thread runs it; each call releases the GIL while it waits, and Ctrl-C
    ends a running generation (the model stays usable)."""

    def __init__(self, native: _native.Model) -> None:
        self._native = native
        #: config.json (implied by the metadata for GGUF).
        self.config: dict = json.loads(native.config_json)
        #: generation_config.json ({} when absent).
        self.generation_config: dict = json.loads(native.generation_config_json()) or {}
        eos = _first(self.generation_config.get("eos_token_id", self.config.get("eos_token_id")))
        pad = self.generation_config.get("pad_token_id", self.config.get("pad_token_id"))
        bos = self.generation_config.get("bos_token_id", self.config.get("bos_token_id"))
        self._tokenizer = Tokenizer(native, eos, _first(pad), _first(bos)) if native.has_tokenizer else None

    @property
    def path(self) -> str:
        """The model's local path (a split made for ``compression``, or a
        hub id's snapshot)."""
        return self._native.path

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer, with Hugging Face's calling conventions."""
        if self._tokenizer is None:
            raise RequestError(f"{self.path} has no tokenizer; pass token ids to generate")
        return self._tokenizer

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        *,
        max_new_tokens: Optional[int] = None,
        max_length: Optional[int] = None,
        use_cache: bool = True,
        return_dict_in_generate: bool = False,
        do_sample: Optional[bool] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        eos_token_id: Union[int, Sequence[int], None] = None,
        pad_token_id: Optional[int] = None,
        seed: int = 0,
    ) -> Any:
        """Continues each row of ``input_ids`` (torch tensor, numpy array or
        lists) as transformers' ``generate`` does: the rows form one batch
        (one read of each layer serves them all); a row's prompt is where
        ``attention_mask`` is 1 (left or right padding); rows of different
        lengths without a mask are separate prompts. Settings default to
        the model's generation_config.json, else greedy. Returns the
        sequences (each row as given, then its new tokens, padded with
        ``pad_token_id``) in the input's type, wrapped in a
        :class:`GenerateOutput` with ``return_dict_in_generate``.
        ``use_cache`` is accepted for compatibility: the KV cache is always used."""
        del use_cache
        kind = kind_of(input_ids)
        rows = rows_of(input_ids, "input_ids")
        prompts = self._prompts(rows, attention_mask)
        gc = self.generation_config
        if max_new_tokens is None:
            max_new_tokens = gc.get("max_new_tokens")
        if max_new_tokens is None:
            limit = max_length or gc.get("max_length") or HF_MAX_LENGTH
            max_new_tokens = max(1, limit - max(len(r) for r in rows))
        sample = gc.get("do_sample", False) if do_sample is None else do_sample
        settings = self._settings(
            max_new_tokens=max_new_tokens,
            greedy=not sample,
            temperature=temperature if temperature is not None else gc.get("temperature", 1.0),
            top_k=top_k if top_k is not None else gc.get("top_k", HF_TOP_K),
            top_p=top_p if top_p is not None else gc.get("top_p", 1.0),
            repetition_penalty=repetition_penalty,
            seed=seed,
            eos_token_id=_ids(eos_token_id),
        )
        answers = self._native.generate(prompts, settings)
        pad = pad_token_id if pad_token_id is not None else self._pad_token_id()
        sequences = [row + tokens for row, (tokens, _, _) in zip(rows, answers)]
        width = max(len(s) for s in sequences)
        sequences = [s + [pad] * (width - len(s)) for s in sequences]
        result = like(sequences, kind, input_ids if kind != LIST else None)
        return GenerateOutput(sequences=result) if return_dict_in_generate else result

    def _pad_token_id(self) -> int:
        if self._tokenizer is not None and self._tokenizer.pad_token_id is not None:
            return self._tokenizer.pad_token_id
        pad = _first(self.config.get("pad_token_id", self.config.get("eos_token_id")))
        return 0 if pad is None else pad

    @staticmethod
    def _prompts(rows: list[list[int]], attention_mask: Any) -> list[list[int]]:
        """Each row's prompt: the tokens its mask marks."""
        if attention_mask is None:
            return rows
        masks = rows_of(attention_mask, "attention_mask")
        if [len(m) for m in masks] != [len(r) for r in rows]:
            raise RequestError("attention_mask must have the shape of input_ids")
        prompts = [[t for t, keep in zip(row, mask) if keep] for row, mask in zip(rows, masks)]
        if any(not p for p in prompts):
            raise RequestError("a row's attention_mask marks no token")
        return prompts

    @staticmethod
    def _settings(
        *,
        max_new_tokens: Optional[int] = None,
        greedy: bool = False,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: int = 0,
        eos_token_id: Optional[list[int]] = None,
        ignore_eos: bool = False,
        stop: Union[str, Sequence[str], None] = None,
    ) -> _native.Settings:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return {
            "max_new_tokens": max_new_tokens,
            "greedy": greedy,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
            "seed": seed,
            "eos_token_id": eos_token_id,
            "ignore_eos": ignore_eos,
            "stop": stops,
        }

    def _chat_ids(self, messages: Messages) -> list[int]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def _prompt_ids(self, prompts: Sequence[str], chat: bool) -> list[list[int]]:
        if chat:
            return [self._chat_ids(p) for p in prompts]
        return self._native.encode(list(prompts), True)

    def complete(
        self,
        prompts: Union[str, Sequence[str]],
        *,
        chat: bool = False,
        **sampling: Unpack[Sampling],
    ) -> list[str]:
        """The answer to each prompt, generated in one batch (one read of
        each layer serves them all). With ``chat``, each prompt is a user
        message under the chat template. Settings as ``airllm run`` takes
        them: unset ones come from generation_config.json; ``temperature``
        0 (or greedy defaults) chooses the likeliest token."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        settings = self._settings(**sampling)
        answers = self._native.generate(self._prompt_ids(texts, chat), settings)
        return [text or "" for _, text, _ in answers]

    def stream(
        self,
        prompt: str,
        *,
        chat: bool = False,
        **sampling: Unpack[Sampling],
    ) -> Iterator[str]:
        """Yields the answer to ``prompt`` in pieces as they are decoded
        (together, what :meth:`complete` returns). Closing the iterator
        early ends the generation."""
        settings = self._settings(**sampling)
        return self._native.stream(self._prompt_ids([prompt], chat)[0], settings)

    def chat(
        self,
        messages: Messages,
        **sampling: Unpack[Sampling],
    ) -> str:
        """The assistant's reply to ``messages`` (``{"role", "content"}``
        dicts, or one user message as text), rendered with the chat
        template as ``airllm run --chat`` does."""
        [(_, text, _)] = self._native.generate([self._chat_ids(messages)], self._settings(**sampling))
        return text or ""

    def profile(
        self,
        *,
        batch: int = 1,
        prompt_tokens: int = 512,
        new_tokens: int = 128,
        prompt: Optional[str] = None,
    ) -> dict:
        """``airllm bench``'s figures on this model, as a dict: a batch of
        ``batch`` prompts (``prompt``, else ``prompt_tokens`` random ids)
        each generate ``new_tokens`` tokens, end tokens ignored
        (``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``bytes_read``,
        ``peak_rss_bytes``, per-unit ``units`` and more)."""
        ids = None if prompt is None else self._native.encode([prompt], True)[0]
        return json.loads(self._native.profile(batch, prompt_tokens, new_tokens, ids))


def _delete_original(path: str) -> None:
    """Deletes the weights of the model at ``path`` (its GGUF file, or a
    directory's safetensors and PyTorch shards), keeping config and tokenizer."""
    source = Path(path)
    if source.is_file():
        source.unlink()
        return
    patterns = (
        "*.safetensors",
        "*.safetensors.index.json",
        "pytorch_model*.bin",
        "pytorch_model.bin.index.json",
    )
    for pattern in patterns:
        for weights in source.glob(pattern):
            weights.unlink()


class AutoModel:
    """AirLLM's entry point: ``AutoModel.from_pretrained(model)``."""

    def __init__(self) -> None:
        raise TypeError("use AutoModel.from_pretrained(model_or_path)")

    @staticmethod
    def from_pretrained(
        model_or_path: Union[str, os.PathLike],
        *,
        compression: Optional[str] = None,
        max_memory: Union[int, str, None] = None,
        max_host_memory: Union[int, str, None] = None,
        device: str = "cpu",
        dtype: Optional[str] = None,
        layer_shards_saving_path: Union[str, os.PathLike, None] = None,
        hf_token: Optional[str] = None,
        prefetching: bool = True,
        profiling_mode: bool = False,
        delete_original: bool = False,
        threads: Optional[int] = None,
        activations: Optional[str] = None,
    ) -> Model:
        """Opens a local Hugging Face directory, GGUF file, split directory
        or hub id (downloaded into the Hugging Face cache), as ``airllm
        run`` takes them.

        ``compression`` "4bit" (nf4) or "8bit" (q8_0) first splits the model
        into ``layer_shards_saving_path`` (default: beside the model),
        reusing a finished split on later calls; ``delete_original`` then
        deletes the original weights. ``max_memory`` is the memory budget
        (bytes, or text such as "4GB"; default 80% of available RAM, or on
        a GPU its free memory less a margin). ``device`` is "cpu" (or
        "wgpu" / "cuda[:N]" in builds with them); on a GPU,
        ``max_host_memory`` bounds the host tier (units kept in host memory
        between passes, and the KV cache of layers the device budget leaves
        out) and ``dtype`` is "f32", "f16" or "bf16" (cuda), as ``airllm
        run --max-host-memory --dtype`` take them.
        ``prefetching`` reads the next layer while one computes.
        ``profiling_mode`` prints each layer's read and compute times after
        every generation. ``threads`` sets the compute threads (default: the
        physical cores); ``activations`` "f32" keeps the cpu's products in
        floats (default "reduced", as ``airllm run --activations``)."""
        path = os.fspath(model_or_path)
        if compression is not None:
            if compression not in COMPRESSIONS:
                raise RequestError(
                    f"unknown compression {compression!r}; use None, '4bit' (nf4) or '8bit' (q8_0)"
                )
            out = None if layer_shards_saving_path is None else os.fspath(layer_shards_saving_path)
            path, original = _native.split_model(path, COMPRESSIONS[compression], out, hf_token)
            if delete_original:
                _delete_original(original)
        elif delete_original:
            raise RequestError(
                "delete_original deletes the weights after a compressed split; give compression too"
            )
        native = _native.Model(
            path,
            device=device,
            max_memory=max_memory,
            max_host_memory=max_host_memory,
            dtype=dtype,
            threads=threads,
            activations=activations,
            prefetch=1 if prefetching else 0,
            hf_token=hf_token,
            profiling=profiling_mode,
        )
        return Model(native)
