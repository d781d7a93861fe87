"""Run state, checkpoints and the self-describing output of a training run.

Run dir layout:
    state/step-000040/   accelerate save_state: model, optimizer, scheduler, RNG, TrainState (data position)
    best/trainable.safetensors   the trainable weights at the best eval loss so far
    ranks/rank-N.json    each process's own report: world size, parameter digest
    model/               THE output: merged model (safetensors), tokenizer, training.json, metrics.json
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class TrainState:
    """Everything a resumed run needs beyond model/optimizer/scheduler/RNG: saved by save_state."""

    step: int = 0
    micro_batches: int = 0  # data position: micro-batches this process has consumed
    evals: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    out_of_time: bool = False  # the training-time budget (max_minutes) ended the run
    seconds: float = 0.0  # training-step time, first step after a (re)start excluded (warm-up)
    tokens: int = 0
    useful_tokens: int = 0
    last_loss: float = math.nan
    train_losses: list[dict[str, float]] = field(default_factory=list)  # every optimizer step: the loss curve
    _warm: bool = field(default=False, repr=False)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def advance(self, micro: int, seconds: float, tokens: int, useful: int) -> None:
        self.step += 1
        self.micro_batches += micro
        if self._warm:
            self.seconds, self.tokens, self.useful_tokens = (
                self.seconds + seconds, self.tokens + tokens, self.useful_tokens + useful)
        self._warm = True

    def record_train_loss(self, loss: float) -> None:
        self.last_loss = loss
        self.train_losses.append({"step": self.step, "loss": loss})

    def record_eval(self, step: int, loss: float, min_delta: float) -> bool:
        """Note an eval loss; True when it is the new best."""
        self.evals.append({"step": step, "eval_loss": loss})
        if loss < self.best_loss - min_delta:
            self.best_loss, self.best_step, self.evals_since_best = loss, step, 0
            return True
        self.evals_since_best += 1
        return False

    def speed(self) -> dict[str, float]:
        if not self.seconds:
            return {"tokens_per_s": 0.0, "useful_tokens_per_s": 0.0}
        return {"tokens_per_s": round(self.tokens / self.seconds, 1),
                "useful_tokens_per_s": round(self.useful_tokens / self.seconds, 1)}


def check_world_size(actual: int, expected: int) -> None:
    if expected and actual != expected:
        raise SystemExit(
            f"accelerate started {actual} process(es) but {expected} were expected: on CPU, processes only join "
            "one group when accelerate is told it runs on CPU (use_cpu: true / ACCELERATE_USE_CPU=1)")


def check_run_dir(run_dir: Path, resume: bool, is_main: bool) -> None:
    if resume:
        return
    if (run_dir / "model").exists():
        raise SystemExit(f"{run_dir} already holds a finished model: choose a new --output-dir")
    if latest(run_dir):
        raise SystemExit(f"{run_dir} holds checkpoints of an earlier run: pass --resume to continue it, "
                         "or choose a new --output-dir")


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (incomplete ones are still named *.tmp)."""
    done = sorted(p for p in (run_dir / "state").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_checkpoint(accelerator: Any, run_dir: Path, state: TrainState, keep: int) -> Path:
    """save_state into a temp dir, renamed once every process has written: a kill leaves no half checkpoint."""
    final = run_dir / "state" / f"step-{state.step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted((run_dir / "state").glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_trainable_only(accelerator: Any, model: Any) -> None:
    """LoRA checkpoints keep the adapters only: megabytes, not 540 MB of frozen base weights each time."""
    keep = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def drop_frozen(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for state in weights:
            for key in [k for k in state if k.removeprefix("module.") not in keep]:
                del state[key]

    accelerator.register_save_state_pre_hook(drop_frozen)


def trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_best(accelerator: Any, model: Any, run_dir: Path) -> None:
    from safetensors.torch import save_file

    if accelerator.is_main_process:
        best = run_dir / "best"
        best.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state(accelerator.unwrap_model(model).lm), str(best / "trainable.tmp"))
        (best / "trainable.tmp").replace(best / "trainable.safetensors")


def param_digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def finish(accelerator: Any, model: Any, tokenizer: Any, cfg: Any, state: TrainState, run_dir: Path,
           data_dir: Path, architecture: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every process reports itself; the main one writes the best weights, merged, to run_dir/model."""
    lm = accelerator.unwrap_model(model).lm
    rank = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "param_digest": param_digest(lm), "device": str(accelerator.device)}
    (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    (run_dir / "ranks" / f"rank-{accelerator.process_index}.json").write_text(json.dumps(rank))
    accelerator.wait_for_everyone()
    model_dir = run_dir / "model"
    result = {"model_dir": str(model_dir), "world_size": accelerator.num_processes, "step": state.step,
              "best_step": state.best_step, "best_eval_loss": state.best_loss, "stopped_early": state.stopped_early,
              "out_of_time": state.out_of_time,
              "param_digests": [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text())["param_digest"]
                                for r in range(accelerator.num_processes)], **state.speed()}
    if accelerator.is_main_process:
        tmp = _write_model(lm, tokenizer, run_dir, cfg.method)
        _describe(tmp, cfg, state, data_dir, accelerator, result, architecture or {})
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)  # last: a model/ dir is always complete
    accelerator.wait_for_everyone()
    return result


def _write_model(lm: Any, tokenizer: Any, run_dir: Path, method: str) -> Path:
    from safetensors.torch import load_file

    from tasks.answer.prompting import stop_token_ids

    best = run_dir / "best" / "trainable.safetensors"
    if best.is_file():
        unexpected = lm.load_state_dict(load_file(str(best)), strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"best weights do not fit the model: {unexpected[:3]}")
    if method == "lora":
        lm = lm.merge_and_unload()
    lm.set_attn_implementation("sdpa")  # the packed-training attention is not for serving (padding, cache)
    if getattr(lm, "is_gradient_checkpointing", False):
        lm.gradient_checkpointing_disable()
    # generation ends where training taught the model to end: the chat template's end of turn
    lm.generation_config.eos_token_id = stop_token_ids(tokenizer, lm.generation_config)
    if lm.generation_config.pad_token_id is None:
        lm.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = run_dir / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp


def _describe(model_dir: Path, cfg: Any, state: TrainState, data_dir: Path, accelerator: Any,
              result: dict[str, Any], architecture: dict[str, Any]) -> None:
    import accelerate
    import peft
    import torch
    import transformers

    manifest = data_dir / "manifest.json"
    meta = json.loads(manifest.read_text()) if manifest.is_file() else {}
    training = {
        "config": asdict(cfg), "base_model": cfg.base_model, **architecture,
        "dataset": {"version": str(meta.get("version") or data_dir.name), "dir": str(data_dir),
                    "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if meta else None},
        "git": git_revision(), "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "peft": peft.__version__},
    }
    metrics = {**{k: v for k, v in result.items() if k != "param_digests"}, "evals": state.evals,
               "base_eval_loss": state.evals[0]["eval_loss"] if state.evals else None,
               "last_train_loss": state.last_loss, "train_losses": state.train_losses}
    (model_dir / "training.json").write_text(json.dumps(training, indent=2, default=str))
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))


def git_revision() -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"revision": "unknown", "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
