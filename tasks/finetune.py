"""Launch the training script under ``accelerate launch``, stream its progress, trust only its own report.

The topology is an accelerate profile (``infra/accelerate/<profile>.yaml``); the world size the
profile asks for is checked against the one every training process reports, and the processes'
final parameters must agree (DDP keeps them identical: a mismatch means they did not train together).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ragtune.settings import Settings

if TYPE_CHECKING:
    from tasks.dataset_store import DatasetVersion

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "infra" / "accelerate"


class TrainingError(RuntimeError):
    """The training run failed or reported something inconsistent; the message carries its last output."""


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    world_size: int  # processes over all machines
    use_cpu: bool


@dataclass(frozen=True)
class TrainingRun:
    run_dir: Path
    model_dir: Path
    world_size: int
    result: dict[str, Any]


def load_profile(name: str) -> Profile:
    import yaml

    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise ValueError(f"unknown accelerate profile {name!r}: choose one of {known}")
    config = yaml.safe_load(path.read_text())
    return Profile(name, path, int(config.get("num_processes", 1)), bool(config.get("use_cpu", False)))


def new_run_dir(settings: Settings, version: str, method: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.data_dir / "runs" / f"{version[:12]}-{method}-{stamp}"


def resumable_run(settings: Settings, version: str, method: str) -> Path | None:
    """The newest run of this dataset version and method that has a checkpoint and no final model."""
    runs = sorted((settings.data_dir / "runs").glob(f"{version[:12]}-{method}-*"), reverse=True)
    return next((r for r in runs if any((r / "state").glob("step-*")) and not (r / "model").exists()), None)


def launch_command(profile: Profile, train_args: list[str]) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(profile.path)]
    return [*launch, "-m", "tasks.training.train", *train_args]


def resolve_bf16(choice: str, profile: Profile, threads: int) -> str:
    """``auto`` on CPU decided here, once: ranks measuring for themselves could disagree."""
    if choice != "auto" or not profile.use_cpu:
        return choice
    from tasks.models import cpu_bf16_pays

    return "yes" if cpu_bf16_pays(threads) else "no"


def launch_env(profile: Profile, threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    if profile.use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"  # without it, CPU workers each train alone (world size 1)
    return env


def stream(cmd: list[str], env: dict[str, str], on_event: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Run ``cmd``; hand each JSON progress line to ``on_event``; return the final ``result`` event."""
    tail: deque[str] = deque(maxlen=25)
    result: dict[str, Any] = {}
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = _event(line)
            if event is None:
                tail.append(line.rstrip())
                continue
            on_event(event)
            if event["event"] in ("result", "stopped"):
                result = event
    if proc.returncode != 0 or not result:
        last = "\n".join(t for t in tail if t)
        raise TrainingError(f"training exited with code {proc.returncode}; last output:\n{last}")
    return result


def _event(line: str) -> dict[str, Any] | None:
    if not line.startswith('{"event"'):
        return None
    try:
        return dict(json.loads(line))
    except json.JSONDecodeError:
        return None


def check_report(result: dict[str, Any], profile: Profile) -> None:
    """The script's own report must match the profile: processes that did not join one group train alone."""
    if result.get("event") == "stopped":
        return
    if result.get("world_size") != profile.world_size:
        raise TrainingError(f"profile {profile.name} asks for {profile.world_size} processes; "
                            f"the training reported world size {result.get('world_size')}")
    if len(set(result.get("param_digests", []))) != 1:
        raise TrainingError("the processes ended with different parameters: they did not train together")


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(settings: Settings, data_dir: Path, version: str, profile_name: str, preset: str, method: str,
                resume: bool = False, overrides: dict[str, Any] | None = None) -> TrainingRun:
    """One training run under accelerate; progress goes to the task log as it happens."""
    from prefect.logging import get_run_logger

    from tasks.models import free_cores, generator_source

    logger = get_run_logger()
    profile = load_profile(profile_name)
    run_dir = (resumable_run(settings, version, method) if resume else None) or new_run_dir(settings, version, method)
    threads = settings.models.torch_threads or max(1, free_cores() // max(1, profile.world_size))
    base = generator_source(settings.cache_dir, settings.models.generator).path
    args = {"data-dir": data_dir, "output-dir": run_dir, "base-model": base, "preset": preset, "method": method,
            "threads": threads, "expect-world-size": profile.world_size, **(overrides or {})}
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
    from tasks.dataset_store import load_dataset_version

    return load_dataset_version(settings, ref).require_passed()
