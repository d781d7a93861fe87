"""Launch the training script under ``accelerate launch``, stream its progress, trust only its own report.

Prefect-free and settings-free (PyYAML, the standard library and ``tasks.runtime`` only): ``tasks.training.run``
wraps it in a Prefect task, and ``bench/train.py`` uses it directly on machines that hold only the
training stack (torch, transformers, accelerate, peft), such as a lent GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "infra" / "accelerate"


class TrainingError(RuntimeError):
    """The training run failed or reported something inconsistent; the message carries its last output."""


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    world_size: int  # processes over all machines
    use_cpu: bool


def load_profile(name: str) -> Profile:
    import yaml

    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise ValueError(f"unknown accelerate profile {name!r}: choose one of {known}")
    config = yaml.safe_load(path.read_text())
    return Profile(name, path, int(config.get("num_processes", 1)), bool(config.get("use_cpu", False)))


def launch_command(profile: Profile, train_args: list[str]) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(profile.path)]
    return [*launch, "-m", "tasks.training.train", *train_args]


def resolve_bf16(choice: str, profile: Profile, threads: int) -> str:
    """``auto`` on CPU decided here, once: ranks measuring for themselves could disagree."""
    if choice != "auto" or not profile.use_cpu:
        return choice
    from tasks.runtime.cpu import cpu_bf16_pays

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
