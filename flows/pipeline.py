"""release_pipeline: ingest -> dataset (GX gate) -> fine-tune -> evaluate -> promote, as one run.

Each stage is the project's own flow, called as a subflow, so the UI shows the pipeline as a tree
of runs with each stage's artifacts. Run locally (the last stdout line is a JSON object of stage
summaries): ``python -m flows.pipeline [--docs DIR] [--examples PATH] [--preset demo]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from deployments.params import ReleaseParams
from flows.dataset import build_dataset
from flows.finetune import finetune_model
from flows.ingest import ingest_documents
from flows.promote import promote_release
from tasks.release.promotion import Candidate, GateConfig
from tasks.runtime.process import process_settings
from tasks.training.curves import publish_training_curves


@flow(name="release-pipeline")
def release_pipeline(params: ReleaseParams = ReleaseParams()) -> dict[str, Any]:  # noqa: B008 - a UI form default
    """One release from documents and examples: each stage's result is logged as it lands.

    Args:
        params: what to index, what to train on, and how the candidate is gated.
    """
    collection = params.collection or process_settings().milvus.collection
    stages: dict[str, Any] = {}
    _stage(stages, "ingest", ingest_documents, params.docs, collection=collection)
    _stage(stages, "dataset", build_dataset, params.examples, params.mapping, collection if params.grounded else None)
    finetune = _stage(stages, "finetune", finetune_model, stages["dataset"]["version"], params.profile, params.preset,
                      params.method, evaluate=params.evaluate)
    model_dir = _model_dir(finetune)
    stages["curves"] = publish_training_curves(model_dir)
    # base vs candidate, same prompts (the model-eval artifact); timed inside finetune_model
    stages["evaluate"] = {**finetune.get("eval", {}), "seconds": finetune.get("eval_s")}
    _log("evaluate", stages["evaluate"])
    candidate = Candidate(collection=collection, checkpoint=model_dir, dataset_version=stages["dataset"]["version"],
                          gx_success=stages["dataset"]["passed"])
    gate = GateConfig(questions=params.gate_questions, model_dataset=stages["dataset"]["version"])
    _stage(stages, "promote", promote_release, candidate, gate, force=params.force)
    return stages


def _stage(stages: dict[str, Any], name: str, run: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one stage (a subflow), note its wall seconds, log its summary as it lands."""
    started = time.monotonic()
    stages[name] = {**run(*args, **kwargs), "seconds": round(time.monotonic() - started, 1)}
    _log(name, stages[name])
    return dict(stages[name])


def _model_dir(finetune: dict[str, Any]) -> str:
    return str(finetune.get("model_dir") or Path(finetune["run_dir"]) / "model")


def _log(stage: str, result: Any) -> None:
    get_run_logger().info("stage %s: %s", stage, json.dumps(stage_summary(stage, result), default=str))


STAGES = ("ingest", "dataset", "finetune", "evaluate", "promote")
EVAL_METRICS = ("loss", "perplexity", "token_f1", "rouge_l", "citation_validity", "abstention_accuracy")


def stage_summary(stage: str, result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a person reads per stage (the full result stays in the run's return value)."""
    keys = {"ingest": ("added", "updated", "deleted", "unchanged", "quarantined", "chunks_written", "counts"),
            "dataset": ("version", "passed", "reused", "counts", "warnings"),
            "finetune": ("dataset", "step", "best_step", "best_eval_loss", "stopped_early", "out_of_time",
                         "world_size", "tokens_per_s", "train_s"),
            "evaluate": ("base", "candidate"),
            "promote": ("promoted", "unchanged", "release_id", "forced")}[stage]
    summary = {k: result[k] for k in (*keys, "seconds") if k in result}
    if stage == "evaluate":
        summary = {who: {m: v for m, v in scores.items() if m in EVAL_METRICS} if isinstance(scores, dict) else scores
                   for who, scores in summary.items()}
    if stage == "promote":
        summary["reasons"] = result.get("decision", {}).get("reasons", [])
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name, field in ReleaseParams.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=field.description)
    given = {k: v for k, v in vars(parser.parse_args()).items() if v is not None}
    stages = release_pipeline(ReleaseParams.model_validate(given))
    # the last stdout line: one JSON object of stage summaries (logs go to stderr)
    print(json.dumps({name: stage_summary(name, stages[name]) for name in STAGES}, default=str), flush=True)
