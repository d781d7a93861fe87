"""Attention for packed rows on CPU: causal attention inside each example, nothing computed across them.

With packed rows and no attention mask, transformers builds a block-diagonal causal mask and sdpa
computes every (query, key) pair of the row before masking most of them out: for 512-token rows
holding ~200-token examples that is several times the attention work needed. Here each example
(found from where ``position_ids`` restart at 0) runs its own causal sdpa: only the needed pairs.
On GPUs, use flash-attention's varlen kernels (``flash_attention_2``) or plain masked ``sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "packed_sdpa"


def example_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the [start, end) of each example: a new one starts wherever the position drops."""
    spans = []
    for row in position_ids.tolist():
        starts = [0, *(i for i in range(1, len(row)) if row[i] <= row[i - 1])]
        spans.append(list(zip(starts, [*starts[1:], len(row)], strict=True)))
    return spans


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                position_ids: torch.Tensor | None = None, **_: Any) -> tuple[torch.Tensor, None]:
    """query [B, H, T, D], key/value [B, H_kv, T, D] -> [B, T, H, D], like transformers' sdpa_attention_forward."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        raise ValueError(f"{NAME} is for packed training rows: no padding mask, no cache")
    rows = []
    for b, spans in enumerate(example_spans(position_ids.expand(query.shape[0], -1))):
        rows.append(torch.cat([F.scaled_dot_product_attention(
            query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e], is_causal=True,
            dropout_p=dropout, scale=scaling, enable_gqa=True) for s, e in spans], dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``attn_implementation="packed_sdpa"`` known to transformers (no mask is built for it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, lambda *args, **kwargs: None)
    return NAME
