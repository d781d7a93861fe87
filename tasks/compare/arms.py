"""The five arms, the trained models they use (trained once, reused while their fingerprint holds), and
the retrieval every retrieval arm shares.

| arm | model | retrieval |
|---|---|---|
| ``base`` | base | no |
| ``rag`` (the baseline) | base | yes |
| ``finetune`` | fine-tuned on question -> answer | no |
| ``finetune-rag`` | the same fine-tuned model | yes |
| ``raft`` | fine-tuned on RAFT examples (``tasks.compare.recipes``) | yes |
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.compare.answers import Context
from tasks.compare.qa import QARow
from tasks.settings import Settings

BASELINE = "rag"


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: str | None  # the training recipe of its model; None = the base model
    rag: bool


ARMS = {a.name: a for a in (Arm("base", None, False), Arm("rag", None, True), Arm("finetune", "finetune", False),
                            Arm("finetune-rag", "finetune", True), Arm("raft", "raft", True))}


def parse_arms(names: Sequence[str] | str) -> list[Arm]:
    """The arms asked for, in the table's order; the baseline (``rag``) is always among them."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in wanted if n not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}: choose among {', '.join(ARMS)}")
    chosen = set(wanted or ARMS) | {BASELINE}
    return [arm for name, arm in ARMS.items() if name in chosen]


@dataclass(frozen=True)
class Training:
    """How the trained arms train: the finetune flow's knobs."""

    profile: str
    preset: str
    method: str
    overrides: dict[str, Any]

    def key(self) -> dict[str, Any]:
        return asdict(self)

    def max_seq_len(self) -> int:
        """The longest example the run keeps: the training sets are fitted to it (longer ones would be dropped)."""
        from tasks.training.config import PRESETS, TrainConfig

        preset = PRESETS.get(self.preset, {})
        return int(self.overrides.get("max_seq_len", preset.get("max_seq_len", TrainConfig.max_seq_len)))


@dataclass(frozen=True)
class TrainedModel:
    recipe: str
    model_dir: str
    dataset: str
    fingerprint: str
    reused: bool
    train_s: float  # the run that made it (a reused model reports its original cost)
    train_tokens: int  # chat-rendered tokens of the training set (one epoch)
    tokens_per_s: float | None


def registry(settings: Settings, fp: str) -> Path:
    return settings.data_dir / "compare" / "checkpoints" / f"{fp}.json"


def reusable(settings: Settings, fp: str) -> TrainedModel | None:
    """The model an earlier run trained with this fingerprint, while its weights are still there."""
    path = registry(settings, fp)
    if not path.is_file():
        return None
    found = TrainedModel(**{**json.loads(path.read_text()), "reused": True})
    return found if (Path(found.model_dir) / "config.json").is_file() else None


def train_or_reuse(settings: Settings, recipe: str, data: Path, version: str, fp: str, tokens: int,
                   training: Training) -> TrainedModel:
    """Reuse the fingerprint's model, else launch the training script (``train-model``) and record it."""
    from tasks.training.run import train_model

    if found := reusable(settings, fp):
        return found
    started = time.monotonic()
    run = train_model(settings, data, version, training.profile, training.preset, training.method, False,
                      training.overrides)
    if run.result.get("event") != "result":
        raise RuntimeError(f"training {recipe} stopped at step {run.result.get('step')} without a model")
    made = TrainedModel(recipe, str(run.model_dir), version, fp, False, round(time.monotonic() - started, 1), tokens,
                        run.result.get("tokens_per_s"))
    path = registry(settings, fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(asdict(made), indent=2))
    path.with_suffix(".tmp").replace(path)
    return made


def retrieve_contexts(settings: Settings, collection: str, rows: Sequence[QARow], k: int) -> dict[str, Context]:
    """The top-``k`` chunks for each question, the serving retriever's way, one connection for all."""
    from tasks.answer.retrieval import retrieve
    from tasks.stores import milvus

    out: dict[str, Context] = {}
    with milvus.connect(settings) as index:
        for row in rows:
            found = retrieve(settings, collection, row.question, k, settings.answer.mode, index)
            out[row.id] = Context(list(found.hits), sum(found.timings.values()))
    return out
