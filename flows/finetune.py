"""finetune_model: an accepted dataset version -> a fine-tuned generator, evaluated against the base.

    python -m flows.finetune DATASET_VERSION [--profile cpu-2proc] [--preset demo] [--method full]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks.runtime.process import process_settings
from tasks.training.run import accepted_dataset, train_model
from tasks.training.scoring import evaluate_models, report_markdown


def _absent(value: Any) -> bool:
    return value is None


class ModelComparison(BaseModel):
    """Base and fine-tuned model scored on the same eval-split prompts (tasks.training.scoring)."""

    base: dict[str, Any]
    candidate: dict[str, Any]


class FinetuneSummary(BaseModel):
    """One training run and, when asked, its evaluation; ``ragtune finetune --json`` prints these keys.

    A run stopped before its end (``event`` "stopped") reports only its step: the fields of the
    training report, and the evaluation, are then absent from the dump rather than null.
    """

    dataset: str
    run_dir: str
    event: str = Field(description="The training script's last event: result, or stopped (resumable).")
    model_dir: str | None = Field(None, exclude_if=_absent)
    world_size: int | None = Field(None, exclude_if=_absent)
    step: int
    best_step: int | None = Field(None, exclude_if=_absent)
    best_eval_loss: float | None = Field(None, exclude_if=_absent)
    stopped_early: bool | None = Field(None, exclude_if=_absent)
    out_of_time: bool | None = Field(None, exclude_if=_absent)
    param_digests: list[str] | None = Field(None, exclude_if=_absent)
    tokens_per_s: float | None = Field(None, exclude_if=_absent)
    useful_tokens_per_s: float | None = Field(None, exclude_if=_absent)
    train_s: float
    eval: ModelComparison | None = Field(None, exclude_if=_absent)
    eval_s: float | None = Field(None, exclude_if=_absent)


@flow(name="finetune-model")
def finetune_model(dataset: str, profile: str = "", preset: str = "", method: str = "", resume: bool = False,
                   evaluate: bool = True, overrides: dict[str, Any] | None = None) -> FinetuneSummary:
    """Train on an accepted dataset version under accelerate, then compare with the base model.

    Args:
        dataset: Dataset version (64 hex) or the name of an accepted dataset (its latest version).
        profile: accelerate profile, infra/accelerate/<profile>.yaml; empty = settings.training.profile.
        preset: Training preset (default, demo, test); empty = settings.training.preset.
        method: lora or full; empty = settings.training.method.
        resume: Continue the newest unfinished run of this dataset from its last checkpoint.
        evaluate: Compare the fine-tuned model with the base model on the eval split afterwards.
        overrides: Training config fields to override (e.g. {"max_steps": 20}).
    """
    settings = process_settings()
    version = accepted_dataset(settings, dataset)  # refuses a version whose gate did not pass
    t = settings.training
    started = time.monotonic()
    run = train_model(settings, version.path, version.version, profile or t.profile, preset or t.preset,
                      method or t.method, resume, overrides)
    summary = FinetuneSummary.model_validate({"dataset": version.version, "run_dir": str(run.run_dir), **run.result,
                                              "train_s": round(time.monotonic() - started, 1)})
    if evaluate and summary.event == "result":
        started = time.monotonic()
        report = evaluate_models(settings, run.model_dir, version.eval_path)
        create_markdown_artifact(report_markdown(report), key="model-eval", description="base vs candidate")
        summary.eval = ModelComparison(base=report["base"], candidate=report["candidate"])
        summary.eval_s = round(time.monotonic() - started, 1)
    get_run_logger().info("fine-tuned %s on %s: %s", method or t.method, version.version[:12], run.model_dir)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--profile", default="")
    parser.add_argument("--preset", default="")
    parser.add_argument("--method", default="", choices=("", "lora", "full"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    print(finetune_model(args.dataset, args.profile, args.preset, args.method, args.resume).model_dump(mode="json"))
