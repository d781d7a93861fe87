"""The ``train-model`` task: launch the training script for a dataset version, trust only its own report.

The topology is an accelerate profile (``infra/accelerate/<profile>.yaml``); the world size the
profile asks for is checked against the one every training process reports, and the processes'
final parameters must agree (DDP keeps them identical: a mismatch means they did not train together).
Launching and streaming live in ``tasks.training.launch`` (no Prefect, no settings), re-exported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.settings import Settings
from tasks.training.launch import (
    Profile,
    TrainingError,
    check_report,
    launch_command,
    launch_env,
    load_profile,
    resolve_bf16,
    stream,
)

if TYPE_CHECKING:
    from tasks.dataset.versions import DatasetVersion

__all__ = ["Profile", "TrainingError", "TrainingRun", "accepted_dataset", "check_report",
           "launch_command", "launch_env", "load_profile", "resolve_bf16", "stream", "train_model"]


@dataclass(frozen=True)
class TrainingRun:
    run_dir: Path
    model_dir: Path
    world_size: int
    result: dict[str, Any]


def new_run_dir(settings: Settings, version: str, method: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.data_dir / "runs" / f"{version[:12]}-{method}-{stamp}"


def resumable_run(settings: Settings, version: str, method: str) -> Path | None:
    """The newest run of this dataset version and method that has a checkpoint and no final model."""
    runs = sorted((settings.data_dir / "runs").glob(f"{version[:12]}-{method}-*"), reverse=True)
    return next((r for r in runs if any((r / "state").glob("step-*")) and not (r / "model").exists()), None)


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(settings: Settings, data_dir: Path, version: str, profile_name: str, preset: str, method: str,
                resume: bool = False, overrides: dict[str, Any] | None = None) -> TrainingRun:
    """One training run under accelerate; progress goes to the task log as it happens."""
    from prefect.logging import get_run_logger

    from tasks.runtime.cpu import free_cores
    from tasks.runtime.sources import generator_source

    logger = get_run_logger()
    profile = load_profile(profile_name)
    run_dir = (resumable_run(settings, version, method) if resume else None) or new_run_dir(settings, version, method)
    threads = settings.models.torch_threads or max(1, free_cores() // max(1, profile.world_size))
    base = generator_source(settings.cache_dir, settings.models.generator).path
    args = {"data-dir": data_dir, "output-dir": run_dir, "base-model": base, "preset": preset, "method": method,
            "threads": threads, "expect-world-size": profile.world_size,
            "gradient-checkpointing": settings.training.gradient_checkpointing, **(overrides or {})}
    args["bf16"] = resolve_bf16(str(args.get("bf16", "auto")), profile, threads)
    cmd = launch_command(profile, [*_flags(args), *(["--resume"] if resume else [])])
    logger.info("launching %s (%s, %d process(es)) in %s", profile.name, method, profile.world_size, run_dir)
    result = stream(cmd, launch_env(profile, threads), lambda e: logger.info("%s", json.dumps(e)))
    check_report(result, profile)
    return TrainingRun(run_dir, run_dir / "model", int(result.get("world_size", 0)), result)


def _flags(args: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in args.items():
        if isinstance(value, bool):
            flag = name.replace("_", "-")
            out.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


@task(name="accepted-dataset", cache_policy=NO_CACHE)
def accepted_dataset(settings: Settings, ref: str) -> DatasetVersion:
    """The dataset version (id or accepted name), verified by sha256; refused unless its gate passed."""
    from tasks.dataset.versions import load_dataset_version

    return load_dataset_version(settings, ref).require_passed()
