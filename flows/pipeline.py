"""release_pipeline: ingest -> dataset (GX gate) -> fine-tune -> evaluate -> promote, as one run.

Each stage is the project's own flow, called as a subflow, so the UI shows the pipeline as a tree
of runs with each stage's artifacts. Run locally (the last stdout line is a JSON object of stage
summaries): ``python -m flows.pipeline [--docs DIR] [--examples PATH] [--preset demo]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import flow, get_run_logger
from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from deployments.params import ReleaseParams
from flows.dataset import DatasetSummary, build_dataset
from flows.finetune import FinetuneSummary, ModelComparison, finetune_model
from flows.ingest import ingest_documents
from flows.promote import promote_release
from tasks.ingest.report import IngestReport
from tasks.release.promotion import Candidate, GateConfig
from tasks.release.result import PromotionResult
from tasks.runtime.process import process_settings
from tasks.training.curves import publish_training_curves

P = ParamSpec("P")
R = TypeVar("R")

STAGES = ("ingest", "dataset", "finetune", "evaluate", "promote")
EVAL_METRICS = ("loss", "perplexity", "token_f1", "rouge_l", "citation_validity", "abstention_accuracy")


class PipelineResult(BaseModel):
    """Every stage's result, and each stage's wall seconds (``evaluate``: timed inside finetune_model).

    Dumped as one dict per stage with its ``seconds`` beside the stage's own keys (for ingest, in
    place of its per-step timings), the shape the run's return value has always had.
    """

    ingest: IngestReport
    dataset: DatasetSummary
    finetune: FinetuneSummary
    curves: dict[str, Any]
    evaluate: ModelComparison | None
    promote: PromotionResult
    seconds: dict[str, float | None]

    @model_serializer(mode="wrap")
    def _with_stage_seconds(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        stages = handler(self)
        seconds = stages.pop("seconds")
        stages["evaluate"] = stages["evaluate"] or {}
        return {name: {**value, "seconds": seconds[name]} if name in seconds else value
                for name, value in stages.items()}

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: stage_summary(name, getattr(self, name), self.seconds.get(name)) for name in STAGES}


@flow(name="release-pipeline")
def release_pipeline(params: ReleaseParams = ReleaseParams()) -> PipelineResult:  # noqa: B008 - a UI form default
    """One release from documents and examples: each stage's result is logged as it lands.

    Args:
        params: what to index, what to train on, and how the candidate is gated.
    """
    collection = params.collection or process_settings().milvus.collection
    seconds: dict[str, float | None] = {}
    ingest = _stage(seconds, "ingest", ingest_documents, params.docs, collection=collection)
    dataset = _stage(seconds, "dataset", build_dataset, params.examples, params.mapping,
                     collection if params.grounded else None)
    finetune = _stage(seconds, "finetune", finetune_model, dataset.version, params.profile, params.preset,
                      params.method, evaluate=params.evaluate)
    model_dir = finetune.model_dir or str(Path(finetune.run_dir) / "model")
    curves = publish_training_curves(model_dir)
    seconds["evaluate"] = finetune.eval_s  # base vs candidate, same prompts (the model-eval artifact)
    _log("evaluate", finetune.eval, finetune.eval_s)
    candidate = Candidate(collection=collection, checkpoint=model_dir, dataset_version=dataset.version,
                          gx_success=dataset.passed)
    gate = GateConfig(questions=params.gate_questions, model_dataset=dataset.version)
    promote = _stage(seconds, "promote", promote_release, candidate, gate, force=params.force)
    return PipelineResult(ingest=ingest, dataset=dataset, finetune=finetune, curves=curves, evaluate=finetune.eval,
                          promote=promote, seconds=seconds)


def _stage(seconds: dict[str, float | None], name: str, run: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run one stage (a subflow), note its wall seconds, log its summary as it lands."""
    started = time.monotonic()
    result = run(*args, **kwargs)
    seconds[name] = round(time.monotonic() - started, 1)
    _log(name, result, seconds[name])
    return result


def _log(stage: str, result: Any, seconds: float | None) -> None:
    get_run_logger().info("stage %s: %s", stage, json.dumps(stage_summary(stage, result, seconds), default=str))


def stage_summary(stage: str, result: Any, seconds: float | None) -> dict[str, Any]:
    """The few numbers a person reads per stage (the full result stays in the run's return value)."""
    return {**_SUMMARIES[stage](result), "seconds": seconds}


def _ingest_summary(r: IngestReport) -> dict[str, Any]:
    return {"added": r.added, "updated": r.updated, "deleted": r.deleted, "unchanged": r.unchanged,
            "quarantined": r.quarantined, "chunks_written": r.chunks_written}


def _dataset_summary(r: DatasetSummary) -> dict[str, Any]:
    return {"version": r.version, "passed": r.passed, "reused": r.reused, "counts": r.counts, "warnings": r.warnings}


def _finetune_summary(r: FinetuneSummary) -> dict[str, Any]:
    """A stopped (resumable) run has no training report: its fields are left out, not shown as null."""
    fields = {"dataset": r.dataset, "step": r.step, "best_step": r.best_step, "best_eval_loss": r.best_eval_loss,
              "stopped_early": r.stopped_early, "out_of_time": r.out_of_time, "world_size": r.world_size,
              "tokens_per_s": r.tokens_per_s, "train_s": r.train_s}
    return {k: v for k, v in fields.items() if v is not None}


def _evaluate_summary(r: ModelComparison | None) -> dict[str, Any]:
    if r is None:  # evaluation off, or a stopped run
        return {}
    return {"base": {m: v for m, v in r.base.items() if m in EVAL_METRICS},
            "candidate": {m: v for m, v in r.candidate.items() if m in EVAL_METRICS}}


def _promote_summary(r: PromotionResult) -> dict[str, Any]:
    fields = {"promoted": r.promoted, "unchanged": r.unchanged, "release_id": r.release_id, "forced": r.forced}
    shown = {k: v for k, v in fields.items() if v is not None or k == "release_id"}  # a refusal: no unchanged, forced
    return {**shown, "reasons": r.decision.reasons}


_SUMMARIES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "ingest": _ingest_summary, "dataset": _dataset_summary, "finetune": _finetune_summary,
    "evaluate": _evaluate_summary, "promote": _promote_summary,
}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    for name, field in ReleaseParams.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=field.description)
    given = {k: v for k, v in vars(parser.parse_args()).items() if v is not None}
    result = release_pipeline(ReleaseParams.model_validate(given))
    # the last stdout line: one JSON object of stage summaries (logs go to stderr)
    print(json.dumps(result.summary(), default=str), flush=True)
