"""Fine-tune the generator on a dataset version: one script, any topology.

    accelerate launch --config_file infra/accelerate/cpu-2proc.yaml -m tasks.training.train \\
        --data-dir DATASET_DIR --output-dir RUN_DIR --base-model MODEL_DIR [--preset demo] [--method full] [--resume]

Reads top to bottom like accelerate's own examples: config -> Accelerator() -> data -> model,
optimizer, scheduler -> prepare -> loop with periodic evaluation and checkpoints -> the best model,
merged, in RUN_DIR/model with its training config, dataset version, metrics and git revision.
Topology (processes, machines, GPUs) lives in the accelerate YAML, never here. No Prefect import and
no settings (the launcher resolves the base model and passes ``--base-model``): this file must stay
launchable on its own.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

import tasks.runtime.cpu  # (offline mode before transformers is imported)
from tasks.answer.prompting import load_tokenizer
from tasks.training import attention as packed_attention
from tasks.training import checkpoint as ckpt
from tasks.training.architecture import AdapterTargets, adapter_targets, describe
from tasks.training.config import TrainConfig, parse_config
from tasks.training.data import DataError, collate, encode_rows, epoch_order, pack_examples, read_jsonl, seeded_sample
from tasks.training.loss import AssistantTokenLoss


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # -- config --------------------------------------------------------------------------------------
    cfg = parse_config(argv)
    base = cfg.required_base_model()
    run_dir = Path(cfg.output_dir)
    # CPU processes only join one process group when accelerate is told it runs on CPU
    on_cpu = cfg.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision="bf16" if cfg.use_bf16(on_cpu) else "no",
        step_scheduler_with_optimizer=False,  # it would step num_processes times per optimizer step
    )
    ckpt.check_world_size(accelerator.num_processes, cfg.expect_world_size)
    threads = tasks.runtime.cpu.configure_torch(cfg.threads) if on_cpu else torch.get_num_threads()
    ckpt.check_run_dir(run_dir, cfg.resume, accelerator.is_main_process)
    set_seed(cfg.seed)
    say = _printer(accelerator)

    # -- data ----------------------------------------------------------------------------------------
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress is our JSON lines; bars would interleave across processes
    tokenizer = load_tokenizer(base)  # its chat template, or the role-tagged fallback (saved with the output)
    data_dir = Path(cfg.data_dir)
    train, dropped = encode_rows(tokenizer, read_jsonl(data_dir / "train.jsonl"), cfg.max_seq_len)
    eval_split = seeded_sample(read_jsonl(data_dir / "eval.jsonl"), cfg.max_eval_examples, cfg.seed)
    held_out, _ = encode_rows(tokenizer, eval_split, cfg.max_seq_len)
    if not train:
        raise SystemExit(f"no training example fits max_seq_len={cfg.max_seq_len} ({dropped} too long)")
    train_rows = pack_examples(train, cfg.max_seq_len, cfg.packing)
    eval_rows = pack_examples(held_out, cfg.max_seq_len, cfg.packing)
    order = epoch_order(len(train_rows), cfg.epochs, cfg.seed)
    pad = tokenizer.pad_token_id
    rows_in_order: Any = [train_rows[i] for i in order]  # a list is a map-style dataset
    train_loader: DataLoader[Any] = DataLoader(rows_in_order, batch_size=cfg.batch_rows,
                                               collate_fn=lambda rows: collate(rows, pad))
    # each process evaluates its own slice with the unwrapped model: no collective per eval batch
    my_eval = eval_rows[accelerator.process_index :: accelerator.num_processes]
    eval_batches = [collate(my_eval[i : i + cfg.batch_rows], pad) for i in range(0, len(my_eval), cfg.batch_rows)]

    # -- model, optimizer, schedule ------------------------------------------------------------------
    attention = cfg.resolved_attention(on_cpu)
    if attention == packed_attention.NAME:
        packed_attention.register()
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation=attention)
    if cfg.gradient_checkpointing:  # recompute each block's activations in backward: memory for large models
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = adapter_targets(lm) if cfg.method == "lora" else None
    architecture = describe(lm, targets)
    if targets is not None:
        lm = _with_lora(lm, cfg, targets)
    model = AssistantTokenLoss(lm)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.resolved_lr(), betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    micro_per_process = math.ceil(math.ceil(len(order) / cfg.batch_rows) / accelerator.num_processes)
    total_steps = math.ceil(micro_per_process / cfg.grad_accum)
    total_steps = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_lambda(total_steps))

    # -- prepare -------------------------------------------------------------------------------------
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    state = ckpt.TrainState()
    accelerator.register_for_checkpointing(state)
    if cfg.method == "lora":
        ckpt.save_trainable_only(accelerator, model)
    if cfg.resume and (last := ckpt.latest(run_dir)):
        accelerator.load_state(str(last), strict=cfg.method != "lora")
        say("resume", step=state.step, checkpoint=str(last))
    batches = iter(accelerator.skip_first_batches(train_loader, state.micro_batches))
    say("start", world_size=accelerator.num_processes, backend=accelerator.state.backend,
        device=str(accelerator.device), mixed_precision=accelerator.mixed_precision, threads=threads,
        attention=attention, gradient_checkpointing=cfg.gradient_checkpointing, **architecture,
        total_steps=total_steps, train_rows=len(train_rows), train_examples=len(train),
        dropped_too_long=dropped, eval_examples=len(held_out), trainable_params=sum(p.numel() for p in trainable))

    # -- loop ----------------------------------------------------------------------------------------
    def evaluate() -> float:
        return _eval_loss(accelerator, accelerator.unwrap_model(model), eval_batches)

    if state.step == 0 and not state.evals:  # the base model is the first candidate for "best"
        if state.record_eval(0, evaluate(), cfg.min_delta):
            ckpt.save_best(accelerator, model, run_dir)
        say("eval", step=0, eval_loss=state.evals[-1]["eval_loss"])
    trained_since = time.monotonic()
    while state.step < total_steps and not state.stopped_early and not state.out_of_time:
        micro = list(islice(batches, cfg.grad_accum))
        if not micro:
            break
        started = time.perf_counter()
        loss = _train_step(accelerator, model, optimizer, scheduler, micro, cfg.max_grad_norm)
        state.advance(len(micro), time.perf_counter() - started, *_token_counts(accelerator, micro))
        state.record_train_loss(loss)
        state.out_of_time = _out_of_time(accelerator, trained_since, cfg.max_minutes)
        final_step = state.step == total_steps or state.out_of_time
        if state.step % cfg.log_every == 0 or final_step:
            say("step", step=state.step, loss=round(loss, 4), lr=scheduler.get_last_lr()[0], **state.speed())
        if state.step % cfg.eval_every == 0 or final_step:
            if state.record_eval(state.step, evaluate(), cfg.min_delta):
                ckpt.save_best(accelerator, model, run_dir)
            state.stopped_early = 0 < cfg.patience <= state.evals_since_best
            say("eval", step=state.step, eval_loss=state.evals[-1]["eval_loss"], best=state.best_loss)
        if state.step % cfg.save_every == 0 or final_step or state.stopped_early:
            ckpt.save_checkpoint(accelerator, run_dir, state, cfg.keep_checkpoints)
        if cfg.stop_after and state.step >= cfg.stop_after and state.step < total_steps:
            say("stopped", step=state.step)  # as if killed here: the run is left to --resume
            return {"event": "stopped", "step": state.step}

    # -- the output: best weights, merged, self-describing -------------------------------------------
    result = ckpt.finish(accelerator, model, tokenizer, cfg, state, run_dir, data_dir, architecture)
    say("result", **result)
    accelerator.end_training()
    return result


def _train_step(accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any,
                micro: list[dict[str, Any]], max_grad_norm: float) -> float:
    """One optimizer step over ``micro`` batches; the mean is over every labelled token of the global batch."""
    n_tokens = accelerator.reduce(sum(b["labels"][:, 1:].ne(-100).sum() for b in micro), "sum")
    scale = accelerator.num_processes / n_tokens.clamp(min=1)  # DDP averages gradients over processes
    total = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(micro):
        # gradients are all-reduced once, on the last micro-batch
        syncing = accelerator.no_sync(model) if i < len(micro) - 1 else nullcontext()
        with syncing:
            loss_sum, _ = model(**batch)
            accelerator.backward(loss_sum * scale)
        total += loss_sum.detach()
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(total, "sum") / n_tokens.clamp(min=1))


def _out_of_time(accelerator: Accelerator, since: float, max_minutes: float) -> bool:
    """Past the training-time budget on any process: every process must stop at the same step (DDP)."""
    if max_minutes <= 0:
        return False
    late = torch.tensor(float(time.monotonic() - since > max_minutes * 60), device=accelerator.device)
    return bool(accelerator.reduce(late, "sum") > 0)


@torch.no_grad()
def _eval_loss(accelerator: Accelerator, model: Any, batches: list[dict[str, Any]]) -> float:
    model.eval()
    sums = torch.zeros(2, device=accelerator.device)
    for batch in batches:
        loss_sum, n = model(**{k: v.to(accelerator.device) for k, v in batch.items()})
        sums += torch.stack([loss_sum.float(), n.float()])
    model.train()
    sums = accelerator.reduce(sums, "sum")
    return float(sums[0] / sums[1].clamp(min=1))


def _token_counts(accelerator: Accelerator, micro: list[dict[str, Any]]) -> tuple[int, int]:
    """(all tokens incl. padding, non-padding tokens) this step, over all processes."""
    counts = torch.tensor([sum(b["input_ids"].numel() for b in micro), sum(int(b["useful_tokens"]) for b in micro)],
                          device=accelerator.device)
    total, useful = accelerator.reduce(counts, "sum").tolist()
    return int(total), int(useful)


def _with_lora(lm: Any, cfg: TrainConfig, targets: AdapterTargets) -> Any:
    """LoRA on every linear-like layer of the decoder blocks, found from the model (tasks/training/architecture.py)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets.modules, fan_in_fan_out=targets.transposed, task_type="CAUSAL_LM")
    return get_peft_model(lm, lora)


def _printer(accelerator: Accelerator) -> Any:
    """Progress as one JSON object per line on stdout, from the main process only (finetune.py parses it)."""

    def say(event: str, **fields: Any) -> None:
        if accelerator.is_main_process:
            print(json.dumps({"event": event, **fields}, default=str), flush=True)

    return say


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except DataError as exc:  # a bad dataset is the user's to fix: one line, no traceback
        sys.exit(f"error: {exc}")
