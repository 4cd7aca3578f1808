"""Token ids in and out of the array types users hold: torch tensors,
numpy arrays and (nested) lists."""

from __future__ import annotations

import importlib
from typing import Any, Optional

import numpy as np

from .errors import RequestError

#: The kinds of input ``rows_of`` recognises, which ``like`` reproduces.
TORCH, NUMPY, LIST = "torch", "numpy", "list"


def kind_of(value: Any) -> str:
    """Which kind of token container ``value`` is."""
    if type(value).__module__.startswith("torch"):
        return TORCH
    if isinstance(value, np.ndarray):
        return NUMPY
    return LIST


def rows_of(value: Any, name: str) -> list[list[int]]:
    """``value`` (1-D or 2-D) as a list of rows of ints."""
    if kind_of(value) == TORCH:
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim not in (1, 2):
            raise RequestError(f"{name} has {value.ndim} dimensions; give one row or a batch of rows")
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise RequestError(f"{name} must be a torch tensor, numpy array or list of token ids")
    if all(isinstance(v, (int, np.integer)) for v in value):
        value = [value]
    rows = []
    for row in value:
        if not isinstance(row, (list, tuple)) or not all(isinstance(v, (int, np.integer)) for v in row):
            raise RequestError(f"{name} must hold rows of integer token ids")
        rows.append([int(v) for v in row])
    return rows


def torch_module() -> Any:
    """The torch module, or a RequestError saying how to get it."""
    try:
        return importlib.import_module("torch")
    except ImportError as e:
        raise RequestError(
            "return_tensors='pt' needs torch, which is not installed; "
            "install it (pip install torch) or use return_tensors='np'"
        ) from e


def like(rows: list[list[int]], kind: str, template: Optional[Any] = None) -> Any:
    """``rows`` (all of one length unless ``kind`` is a list) as ``kind``;
    a torch result lands on ``template``'s device."""
    if kind == LIST:
        return rows
    array = np.array(rows, dtype=np.int64)
    if kind == NUMPY:
        return array
    torch = torch_module()
    tensor = torch.from_numpy(array)
    return tensor.to(template.device) if template is not None else tensor


def tensor_kind(return_tensors: Optional[str]) -> str:
    """The kind ``return_tensors`` names (as transformers spells it)."""
    kinds = {None: LIST, "np": NUMPY, "pt": TORCH}
    if return_tensors not in kinds:
        raise RequestError(f"return_tensors={return_tensors!r} is not supported; use 'pt', 'np' or None")
    return kinds[return_tensors]
