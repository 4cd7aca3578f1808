"""Batch jobs on Ray Data: :class:`Predictor` answers a dataset's ``prompt``
column, one model per actor::

    import ray
    from airllm_rs.ray import Predictor

    ds = ray.data.read_json("prompts.jsonl")
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model": "/models/llama-70b", "max_new_tokens": 64},
        concurrency=2,
        batch_size=16,
    )

Ray places the actors on its nodes (one machine or a cluster started with
``ray start``); each batch is one generation batch in its actor's model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from .model import AutoModel, Sampling

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Predictor:
    """A callable class for ``Dataset.map_batches``: reads column
    ``prompt`` and adds column ``answer``. Each actor holds one model.

    Constructor keywords: ``model`` (path or hub id), ``max_memory``,
    ``threads`` (compute threads per actor), ``chat`` (apply the chat
    template; default False), the settings of
    :meth:`airllm_rs.Model.complete` (:class:`airllm_rs.model.Sampling`:
    ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
    ``repetition_penalty``, ``seed``, ``stop``, ``ignore_eos``),
    and ``device``, ``compression``, ``activations`` as
    :meth:`airllm_rs.AutoModel.from_pretrained` takes them."""

    def __init__(
        self,
        model: str,
        *,
        max_memory: Union[int, str, None] = None,
        threads: Optional[int] = None,
        chat: bool = False,
        device: str = "cpu",
        compression: Optional[str] = None,
        activations: Optional[str] = None,
        **sampling: Unpack[Sampling],
    ) -> None:
        self.model = AutoModel.from_pretrained(
            model,
            max_memory=max_memory,
            threads=threads,
            device=device,
            compression=compression,
            activations=activations,
        )
        self.chat = chat
        self.sampling = sampling

    def __call__(self, batch: Any) -> Any:
        """Answers the batch's prompts (a dict of numpy columns or a pandas
        DataFrame) in one generation batch; returns it with ``answer``."""
        prompts = [str(p) for p in batch["prompt"]]
        answers = self.model.complete(prompts, chat=self.chat, **self.sampling)
        if isinstance(batch, dict):
            batch["answer"] = np.array(answers, dtype=object)
        else:
            batch["answer"] = answers
        return batch
