"""The training path checked end to end on whatever device is there (made for a lent GPU): one JSON line.

1. Packed rows under the attention the script picks (masked ``sdpa`` on a GPU): the loss of a packed
   batch equals the sum of its examples' separate losses, in fp32 and under bf16 autocast.
2. A run stopped after a checkpoint, then ``--resume``d, against the same run uninterrupted: the resumed
   run starts at the saved step and data position, and its per-step train losses and final parameters
   are compared with the uninterrupted run's (bit for bit on CPU; GPU kernels may differ in rounding).
3. The output: ``model/`` written, merged (LoRA), loadable by ``AutoModelForCausalLM``, and it generates.

Needs only the training stack (torch, transformers, accelerate, peft, PyYAML): no Prefect, no settings.

    python bench/train_check.py --model MODEL_DIR --data DATASET_DIR [--method lora] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.training.launch import launch_command, launch_env, load_profile, resolve_bf16, stream  # noqa: E402


def packed_loss_check(model_dir: Path, data: Path, device: str) -> dict[str, Any]:
    """Relative gap between a packed batch's summed loss and the sum of its examples' separate losses."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.answer.prompting import load_tokenizer
    from tasks.training.data import PackedRow, collate, encode_rows, pack_examples, read_jsonl
    from tasks.training.loss import AssistantTokenLoss

    tokenizer = load_tokenizer(model_dir)  # as training loads it: its chat template or the fallback, a pad token
    examples, _ = encode_rows(tokenizer, read_jsonl(data / "train.jsonl")[:12], 1024)
    lm: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    loss = AssistantTokenLoss(lm.to(device)).eval()
    pad = tokenizer.pad_token_id

    def on_device(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(device) for k, v in batch.items()}

    def single(example: Any) -> PackedRow:
        row = PackedRow()
        row.add(example)
        return row

    out: dict[str, Any] = {"examples": len(examples)}
    packed = pack_examples(examples, 1024)
    out["packed_rows"] = len(packed)
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            together, n = loss(**on_device(collate(packed, pad)))
            parts = [loss(**on_device(collate([single(e)], pad))) for e in examples]
        apart = sum(float(s) for s, _ in parts)
        assert int(n) == sum(int(k) for _, k in parts), "labelled tokens differ between packed and separate"
        out[f"{name}_rel_gap"] = abs(float(together) - apart) / apart
    return out


def launch(args: argparse.Namespace, profile: str, run_dir: Path, *extra: str) -> list[dict[str, Any]]:
    """One training run under accelerate launch; every JSON event it printed."""
    spec = load_profile(profile)
    train_args = ["--data-dir", str(args.data), "--output-dir", str(run_dir), "--base-model", str(args.model),
                  "--method", args.method, "--bf16", resolve_bf16("auto", spec, args.threads),
                  "--max-seq-len", str(args.max_seq_len), "--batch-rows", str(args.batch), "--grad-accum", "2",
                  "--max-steps", str(args.steps), "--warmup-steps", "2", "--eval-every", str(args.save_every),
                  "--save-every", str(args.save_every), "--log-every", "1", "--max-eval-examples", "32",
                  "--patience", "0", "--threads", str(args.threads), "--expect-world-size", str(spec.world_size),
                  *extra]
    events: list[dict[str, Any]] = []
    stream(launch_command(spec, train_args), launch_env(spec, args.threads), events.append)
    return events


def step_losses(events: list[dict[str, Any]]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


def resume_check(args: argparse.Namespace, profile: str, work: Path) -> dict[str, Any]:
    whole = launch(args, profile, work / "whole")
    stop = args.save_every
    first = launch(args, profile, work / "resumed", "--stop-after", str(stop))
    second = launch(args, profile, work / "resumed", "--resume")
    start = next(e for e in whole if e["event"] == "start")
    resumed_at = next(e for e in second if e["event"] == "resume")
    end_whole, end_resumed = whole[-1], second[-1]
    losses_whole, losses_resumed = step_losses(whole), step_losses(second)
    after = [s for s in losses_resumed if s in losses_whole]
    metrics = json.loads((work / "resumed" / "model" / "metrics.json").read_text())
    return {
        "device": start["device"], "mixed_precision": start["mixed_precision"], "attention": start["attention"],
        "stopped_at": first[-1]["step"], "resumed_from_step": resumed_at["step"],
        "resumed_steps": sorted(losses_resumed), "steps": end_resumed["step"],
        "max_step_loss_gap": max(abs(losses_whole[s] - losses_resumed[s]) for s in after),
        "same_final_params": end_whole["param_digests"] == end_resumed["param_digests"],
        "final_loss_whole": losses_whole[max(losses_whole)], "final_loss_resumed": losses_resumed[max(losses_resumed)],
        "curve_steps_in_metrics": [x["step"] for x in metrics["train_losses"]],
        "tokens_per_s_whole": end_whole["tokens_per_s"],
    }


def output_check(model_dir: Path, device: str) -> dict[str, Any]:
    """The run's model/ is a plain transformers model (LoRA merged) that generates."""
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.answer.prompting import load_tokenizer

    files = sorted(p.name for p in model_dir.iterdir())
    tokenizer = load_tokenizer(model_dir)
    lm: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    lm = lm.to(device)
    prompt: Any = tokenizer.apply_chat_template([{"role": "user", "content": "Where is my order?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        generated = lm.generate(**prompt.to(device), max_new_tokens=8, do_sample=False)
    training = json.loads((model_dir / "training.json").read_text())
    return {"files": files, "lora_modules_left": sum("lora_" in n for n, _ in lm.named_parameters()),
            "new_tokens": int(generated.shape[1] - prompt["input_ids"].shape[1]),
            "recorded_precision": training["mixed_precision"]}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="A dataset dir: train.jsonl, eval.jsonl.")
    parser.add_argument("--method", default="lora", choices=("full", "lora"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-every", type=int, default=4, help="Also the step the interrupted run stops at.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, profile = ("cuda", "single-gpu") if cuda else ("cpu", "cpu-1proc")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "method": args.method}
    out["packed_loss"] = packed_loss_check(args.model, args.data, device)
    with tempfile.TemporaryDirectory(prefix="ragtune-train-check-") as tmp:
        out["resume"] = resume_check(args, profile, Path(tmp))
        out["output"] = output_check(Path(tmp) / "resumed" / "model", device)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
