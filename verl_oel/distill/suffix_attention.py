"""The attention the student and teacher passes run on CPU: SDPA without a padding mask and without copied
key/value heads.

Every forward of ``teacher.score_responses`` has the same shape of problem: right-padded rows (a
micro-batch's suffixes) whose queries sit at the END of the keys (a shared prefix's cached keys, then the
suffix's own). A real position then sees every earlier key and no later one, so the causal mask aligned
to the lower right is all it needs; the padding never reaches a real position. transformers' ``sdpa``
cannot know that: it builds a [B, 1, Q, K] mask from the padding mask, and with any mask it copies each
key/value head to the query heads (``repeat_kv``; SDPA's grouped-query option is only taken without a
mask). On the CPU benchmark's shapes (SmolLM2-135M's 9 query and 3 key/value heads, 8 rows, 320 suffix
tokens against 1,600 keys) one layer's attention call took 105 ms that way and 81 ms here; the whole
teacher pass, about 4 % less (README). The implementation here hands SDPA the grouped heads
as they are and, when queries and keys differ in length, one [Q, K] lower-right causal mask.

It is exact for every real position of a right-padded batch and is used only inside ``score_responses``
(``with_suffix_attention``), only where the model runs transformers' ``sdpa`` on CPU; elsewhere (CUDA,
where verl's default ``flash_attention_2`` already aligns a causal mask to the lower right, or another
implementation) the model's own attention runs unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

NAME = "verl_oel_suffix_sdpa"

Result = TypeVar("Result")


def _suffix_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: [B, H, Q, D] queries against [B, H_kv, K, D] keys, Q <= K, the
    queries being the last Q positions; returns [B, Q, H, D]."""
    q_length, kv_length = query.shape[2], key.shape[2]
    if q_length == kv_length:
        mask, causal = None, True
    else:
        # Query i (position kv_length - q_length + i) sees keys 0 .. kv_length - q_length + i.
        mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril(
            kv_length - q_length
        )
        causal = False
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The mask transformers would build for ``NAME``: none (``_suffix_sdpa`` makes its own causal one)."""
    return None


AttentionInterface.register(NAME, _suffix_sdpa)
AttentionMaskInterface.register(NAME, _no_mask)


def _config(model: Any) -> Any:
    config = getattr(model, "config", None)
    return config if hasattr(config, "_attn_implementation") else None


def _on_cpu(model: Any) -> bool:
    parameters = getattr(model, "parameters", None)
    parameter = next(parameters(), None) if callable(parameters) else None
    return parameter is not None and parameter.device.type == "cpu"


@contextmanager
def suffix_attention(model: Any) -> Iterator[bool]:
    """Within the block, ``model`` (a transformers causal LM running ``sdpa`` on CPU) attends with
    ``_suffix_sdpa``; yields whether it does. Only for right-padded input: the padding mask is not read.
    The model's setting is restored on exit, also on an error."""
    config = _config(model)
    if config is None or config._attn_implementation != "sdpa" or not _on_cpu(model):
        yield False
        return
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"


def with_suffix_attention(function: Callable[..., Result]) -> Callable[..., Result]:
    """``function(model, ...)`` run inside ``suffix_attention(model)``: for functions whose model forwards
    take right-padded rows only (``teacher.score_responses``)."""

    @functools.wraps(function)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Result:
        with suffix_attention(model):
            return function(model, *args, **kwargs)

    return wrapper
