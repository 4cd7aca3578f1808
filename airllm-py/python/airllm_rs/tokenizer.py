"""A tokenizer callable as Hugging Face's is, for what AirLLM's examples
use, backed by the engine's own tokenizer (no transformers needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Optional, Union

from . import _native
from ._tensors import LIST, like, rows_of, tensor_kind
from .errors import RequestError

TextInput = Union[str, Sequence[str]]


class BatchEncoding(dict):
    """What calling the tokenizer returns: ``input_ids`` and
    ``attention_mask`` by key or attribute, as transformers' ``BatchEncoding``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


class Tokenizer:
    """The model's tokenizer with Hugging Face's calling conventions:
    ``tokenizer(texts, return_tensors=..., padding=..., truncation=...,
    max_length=...)``, ``decode``, ``batch_decode``, ``apply_chat_template``
    and the special token ids."""

    def __init__(
        self,
        native: _native.Model,
        eos_token_id: Optional[int],
        pad_token_id: Optional[int],
        bos_token_id: Optional[int],
    ) -> None:
        self._native = native
        #: The end-of-sequence token id (None if the model names none).
        self.eos_token_id = eos_token_id
        #: The padding token id (the model's, else its EOS token).
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
        #: The beginning-of-sequence token id, if any.
        self.bos_token_id = bos_token_id
        #: Where padding goes: "right" (transformers' default) or "left".
        self.padding_side = "right"
        #: Where truncation cuts: "right" (keeps the start) or "left".
        self.truncation_side = "right"

    @property
    def eos_token(self) -> Optional[str]:
        """The end-of-sequence token's text."""
        return None if self.eos_token_id is None else self._native.id_to_token(self.eos_token_id)

    @property
    def pad_token(self) -> Optional[str]:
        """The padding token's text."""
        return None if self.pad_token_id is None else self._native.id_to_token(self.pad_token_id)

    @pad_token.setter
    def pad_token(self, token: str) -> None:
        token_id = self._native.token_to_id(token)
        if token_id is None:
            raise RequestError(f"{token!r} is not in the vocabulary")
        self.pad_token_id = token_id

    @property
    def bos_token(self) -> Optional[str]:
        """The beginning-of-sequence token's text."""
        return None if self.bos_token_id is None else self._native.id_to_token(self.bos_token_id)

    @property
    def vocab_size(self) -> int:
        """The number of tokens, added ones included."""
        return self._native.vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(
        self,
        text: TextInput,
        *,
        add_special_tokens: bool = True,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str] = False,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
        return_attention_mask: Optional[bool] = None,
        padding_side: Optional[str] = None,
    ) -> BatchEncoding:
        """Tokenizes one text or a batch; ``padding`` True/"longest" pads to
        the longest, "max_length" to ``max_length``; ``truncation`` keeps at
        most ``max_length`` tokens."""
        single = isinstance(text, str)
        texts: list[str] = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise RequestError("the tokenizer takes a text or a list of texts")
        rows = self._native.encode(texts, add_special_tokens)
        if truncation not in (False, None, "do_not_truncate") and max_length is not None:
            rows = [r[:max_length] if self.truncation_side == "right" else r[-max_length:] for r in rows]
        masks = [[1] * len(r) for r in rows]
        width = self._pad_width(rows, padding, max_length)
        if width is not None:
            rows, masks = self._pad(rows, masks, width, padding_side or self.padding_side)
        kind = tensor_kind(return_tensors)
        if kind != LIST and len({len(r) for r in rows}) > 1:
            raise RequestError(
                "the texts have different lengths, so they cannot form one tensor; pass padding=True"
            )
        encoding = BatchEncoding()
        if kind == LIST and single:
            encoding["input_ids"] = rows[0]
            masks_out: Any = masks[0]
        else:
            encoding["input_ids"] = like(rows, kind)
            masks_out = like(masks, kind)
        if return_attention_mask is not False:
            encoding["attention_mask"] = masks_out
        return encoding

    def _pad_width(
        self, rows: list[list[int]], padding: Union[bool, str], max_length: Optional[int]
    ) -> Optional[int]:
        if padding in (False, None, "do_not_pad"):
            return None
        if padding in (True, "longest"):
            return max(len(r) for r in rows)
        if padding == "max_length":
            if max_length is None:
                raise RequestError("padding='max_length' needs max_length")
            return max(max_length, max(len(r) for r in rows))
        raise RequestError(
            f"padding={padding!r} is not supported; use True, 'longest', 'max_length' or False"
        )

    def _pad(
        self, rows: list[list[int]], masks: list[list[int]], width: int, side: str
    ) -> tuple[list[list[int]], list[list[int]]]:
        if self.pad_token_id is None:
            raise RequestError(
                "the tokenizer has no padding token; set tokenizer.pad_token = tokenizer.eos_token"
            )
        if side not in ("left", "right"):
            raise RequestError(f"padding_side={side!r}; use 'left' or 'right'")
        padded, padded_masks = [], []
        for row, mask in zip(rows, masks):
            fill = width - len(row)
            if side == "left":
                padded.append([self.pad_token_id] * fill + row)
                padded_masks.append([0] * fill + mask)
            else:
                padded.append(row + [self.pad_token_id] * fill)
                padded_masks.append(mask + [0] * fill)
        return padded, padded_masks

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The token ids of ``text``."""
        return self._native.encode([text], add_special_tokens)[0]

    def decode(self, token_ids: Any, skip_special_tokens: bool = False) -> str:
        """The text of one row of token ids (tensor, array or list)."""
        rows = rows_of(token_ids, "token_ids")
        if len(rows) != 1:
            raise RequestError("decode takes one row of token ids; use batch_decode for several")
        return self._native.decode(rows[0], skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """The text of each row."""
        return [self._native.decode(row, skip_special_tokens) for row in rows_of(sequences, "sequences")]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Any:
        """The id of a token, or of each token."""
        if isinstance(tokens, str):
            return self._native.token_to_id(tokens)
        return [self._native.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]]) -> Any:
        """The token of an id, or of each id."""
        if isinstance(ids, int):
            return self._native.id_to_token(ids)
        return [self._native.id_to_token(int(i)) for i in ids]

    def apply_chat_template(
        self,
        conversation: Sequence[dict],
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_tensors: Optional[str] = None,
        return_dict: bool = False,
    ) -> Any:
        """Renders ``conversation`` (a list of ``{"role", "content"}``
        messages, or a batch of them) with the model's chat template, as
        ``airllm run --chat`` does; with ``tokenize`` (the default), its
        token ids."""
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        texts = [self._native.render_chat(json.dumps(list(c)), add_generation_prompt) for c in conversations]
        if not tokenize:
            return texts if batched else texts[0]
        rows = self._native.encode(texts, False)
        kind = tensor_kind(return_tensors)
        ids: Any = like(rows, kind) if (batched or kind != LIST) else rows[0]
        if return_dict:
            masks = [[1] * len(r) for r in rows]
            mask: Any = like(masks, kind) if (batched or kind != LIST) else masks[0]
            return BatchEncoding(input_ids=ids, attention_mask=mask)
        return ids
