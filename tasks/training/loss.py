"""The training objective: summed cross-entropy over labelled (assistant) tokens only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.training.data import IGNORE


class AssistantTokenLoss(nn.Module):
    """Wraps a causal LM; ``forward`` returns (summed loss, number of labelled tokens).

    The vocabulary head runs on labelled positions only: for SmolLM2 it is ~20% of the FLOPs and
    most of the activation memory, and prompt or padding positions never need logits. The sum (not
    the mean) lets the caller divide by the labelled tokens of the whole global batch, so every
    token weighs the same whatever the packing, accumulation or number of processes.
    """

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = self.lm.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return loss, keep.sum()
