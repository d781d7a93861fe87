"""What training needs to know about a causal LM, found from the model itself rather than from layer names.

LoRA goes on every linear-like layer inside the decoder: ``nn.Linear`` (Llama, Qwen2, Mistral, Phi...) and
transformers' ``Conv1D`` (GPT-2's ``c_attn``/``c_proj``/``c_fc``, a linear layer with its weight transposed).
The LM head and the embeddings are left alone: the head is outside the decoder (``get_decoder()``), and
embeddings are not linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AdapterTargets:
    modules: list[str]  # full module names, matched exactly: a head or router sharing a short name is never hit
    kinds: list[str]  # their last name parts, for people: q_proj, c_attn, ...
    transposed: bool  # Conv1D layers (weight stored in x out): peft's fan_in_fan_out


def adapter_targets(lm: Any) -> AdapterTargets:
    """The linear-like layers of ``lm``'s decoder blocks, by full module name."""
    import torch
    from transformers.pytorch_utils import Conv1D

    decoder_modules = {id(m) for m in lm.get_decoder().modules()}
    head = lm.get_output_embeddings()
    found = [(name, module) for name, module in lm.named_modules()
             if isinstance(module, torch.nn.Linear | Conv1D) and id(module) in decoder_modules and module is not head]
    if not found:
        raise ValueError(f"{type(lm).__name__} has no linear layers in its decoder for LoRA: use --method full")
    return AdapterTargets(modules=[name for name, _ in found],
                          kinds=sorted({name.rsplit(".", 1)[-1] for name, _ in found}),
                          transposed=any(isinstance(module, Conv1D) for _, module in found))


def describe(lm: Any, targets: AdapterTargets | None) -> dict[str, Any]:
    """The architecture facts a run's training.json records."""
    return {"architecture": type(lm).__name__, "model_type": getattr(lm.config, "model_type", None),
            "lora_targets": targets.kinds if targets else None}
