"""Training configuration: one dataclass, named presets, and a command line generated from both.

Precedence: dataclass defaults < preset < explicit flags. Every field is a flag (``max_seq_len`` ->
``--max-seq-len``), so a run's ``training.json`` is enough to repeat it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # the test suite: a few steps on short sequences, one thread per process
    "test": {"max_seq_len": 64, "batch_rows": 2, "grad_accum": 2, "max_steps": 4, "warmup_steps": 1,
             "eval_every": 2, "save_every": 2, "log_every": 1, "threads": 1, "patience": 0},
    # a few minutes of CPU training that visibly moves the eval metrics (LoRA: faster than full on CPU).
    # Rows as long as the dataset gate allows, so grounded and abstention examples train too; one row per
    # step (more updates per token on a small set); two epochs; a 7-minute training budget keeps `make demo`
    # within its 15 minutes on a small shared CPU (docs/training.md)
    "demo": {"method": "lora", "max_seq_len": 1024, "batch_rows": 1, "grad_accum": 1, "epochs": 2.0, "max_steps": 0,
             "warmup_steps": 2, "lr": 1e-3, "eval_every": 20, "save_every": 20, "log_every": 2, "patience": 2,
             "max_eval_examples": 12, "max_minutes": 7.0},
}
CHOICES = {"method": ("lora", "full"), "bf16": ("auto", "yes", "no"), "preset": tuple(PRESETS),
           "attention": ("auto", "packed_sdpa", "sdpa", "flash_attention_2", "eager")}


@dataclass
class TrainConfig:
    data_dir: str = ""  # a dataset version dir: train.jsonl, eval.jsonl, manifest.json
    output_dir: str = ""  # the run dir: state/ (checkpoints), best/, model/ (the output)
    base_model: str = ""  # safetensors model dir, required (the train-model task passes the configured generator)
    preset: str = "default"
    method: str = "lora"  # lora | full
    max_seq_len: int = 1024  # longer examples are dropped (and counted), never cut
    packing: bool = True
    batch_rows: int = 4  # packed rows per micro-batch per process
    grad_accum: int = 4
    epochs: float = 1.0
    max_steps: int = 0  # 0 = as many as `epochs` gives
    lr: float = 0.0  # 0 = 2e-4 for LoRA, 5e-5 for full fine-tuning
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    bf16: str = "auto"  # auto = CUDA with bf16, or a CPU where bf16 measures faster than fp32
    cpu: bool = False  # force CPU even when CUDA is present
    attention: str = "auto"  # auto = packed_sdpa on CPU (per-example causal attention), sdpa on GPU
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    threads: int = 0  # torch threads per process; 0 = free cores / processes
    eval_every: int = 50
    max_eval_examples: int = 0  # eval loss on a seeded sample of the eval split; 0 = all of it
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    patience: int = 3  # evaluations without improvement before stopping early; 0 = never
    max_minutes: float = 0.0  # training-time budget: the step that passes it is the last (evaluated, saved); 0 = none
    min_delta: float = 0.0
    seed: int = 1234
    resume: bool = False
    stop_after: int = 0  # stop right after this step's checkpoint, as if killed (tests, demos)
    expect_world_size: int = 0  # fail fast when accelerate started a different number of processes

    def resolved_lr(self) -> float:
        return self.lr or (2e-4 if self.method == "lora" else 5e-5)

    def required_base_model(self) -> str:
        """The model to fine-tune. The launcher resolves it from settings; this process never reads settings."""
        if not self.base_model:
            raise SystemExit("--base-model is required: a safetensors model directory (`ragtune finetune` passes "
                             "the configured generator, by default SmolLM2 converted under DATA_DIR/cache/models/)")
        return self.base_model

    def resolved_attention(self, on_cpu: bool) -> str:
        if self.attention != "auto":
            return self.attention
        # per-example attention saves the masked-out FLOPs on CPU; on a GPU its small kernels and per-layer
        # host syncs make training much slower than masked sdpa (docs/training.md)
        return "packed_sdpa" if on_cpu and self.packing else "sdpa"

    def use_bf16(self, on_cpu: bool) -> bool:
        """auto: bf16 on CUDA that supports it; on a CPU only where it measures faster (the launcher decides
        once and passes ``--bf16 yes|no``, so every rank agrees)."""
        import torch

        from tasks.runtime.cpu import cpu_bf16_pays

        if self.bf16 != "auto":
            return self.bf16 == "yes"
        return cpu_bf16_pays(self.threads) if on_cpu else torch.cuda.is_bf16_supported()

    def lr_lambda(self, total_steps: int) -> Callable[[int], float]:
        """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak at ``total_steps``."""
        warmup, floor = max(0, self.warmup_steps), self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    def validate(self) -> TrainConfig:
        if not self.data_dir or not self.output_dir:
            raise SystemExit("--data-dir and --output-dir are required")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SystemExit(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        positive = ("max_seq_len", "batch_rows", "grad_accum", "eval_every", "save_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs <= 0:
            raise SystemExit("--epochs must be positive")
        if self.max_minutes < 0:
            raise SystemExit("--max-minutes must be 0 (no budget) or positive")
        return self


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description="Fine-tune the generator (see tasks/training/train.py).")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, type=type(f.default), default=argparse.SUPPRESS, choices=CHOICES.get(f.name))
    given = vars(parser.parse_args(argv))
    preset = PRESETS[given.get("preset", "default")]
    return TrainConfig(**{**preset, **given}).validate()
