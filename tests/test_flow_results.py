"""The flows' typed results dump to the keys `ragtune ... --json` has always printed (scripts rely on them).

Each key list below is the dict the flow returned before its result was typed; a field renamed,
dropped or added changes the JSON contract and fails here.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest

from flows.dataset import DatasetSummary, build_dataset
from flows.evaluate_retrieval import BeirEvaluation, PageEvaluation, evaluate_beir, evaluate_pages
from flows.finetune import FinetuneSummary, ModelComparison, finetune_model
from flows.ingest import ingest_documents
from flows.pipeline import STAGES, PipelineResult, release_pipeline, stage_summary
from flows.promote import promote_release
from flows.reindex import reindex_document
from ragtune.commands._common import emit
from tasks.ingest.report import IngestReport, report_markdown
from tasks.release.manifest import GateDecision
from tasks.release.result import PromotionResult

INGEST_KEYS = ["source", "collection", "added", "updated", "deleted", "unchanged", "quarantined", "quarantine",
               "still_quarantined", "skipped", "chunks_written", "chunks_reused", "seconds", "chunks_per_s",
               "embedding", "shards"]
DATASET_KEYS = ["version", "name", "reused", "passed", "counts", "tokens", "path", "warnings"]
TRAINING_REPORT = {"event": "result", "model_dir": "/runs/r/model", "world_size": 2, "step": 20, "best_step": 20,
                   "best_eval_loss": 1.5, "stopped_early": False, "out_of_time": False, "param_digests": ["a", "a"],
                   "tokens_per_s": 900.0, "useful_tokens_per_s": 850.0}
PROMOTED_KEYS = ["promoted", "unchanged", "release_id", "forced", "decision", "retention"]
DECISION_KEYS = ["promote", "forced", "reasons", "candidate", "production", "tolerances", "production_release",
                 "baseline"]
BEIR_KEYS = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "dataset", "mode", "queries", "collection",
             "chunks_written"]


def ingest_report(**changes: Any) -> IngestReport:
    data = {"source": "file:///docs", "collection": "docs__g1", "added": 2, "updated": 1, "deleted": 0,
            "unchanged": 4, "quarantined": 1,
            "quarantine": [{"uri": "file:///docs/bad.pdf", "reason": "truncated | unreadable", "doc_id": "d1"}],
            "still_quarantined": 0, "chunks_written": 30, "chunks_reused": 3,
            "seconds": {"list": 0.01, "embed": 2.5}, "chunks_per_s": 12.0,
            "embedding": {"bf16": None, "threads": 2, "passes_by_threads": {2: 3}, "calibration": {}}}
    return IngestReport.model_validate({**data, **changes})


def dataset_summary() -> DatasetSummary:
    return DatasetSummary(version="a" * 64, name="support", reused=False, passed=True,
                          counts={"train": 40, "eval": 10}, tokens={"train": {"max": 200}}, path="/cache/a",
                          warnings=["label_drift"])


def finetune_summary(**report: Any) -> FinetuneSummary:
    return FinetuneSummary.model_validate({"dataset": "a" * 64, "run_dir": "/runs/r", **report, "train_s": 61.2})


def decision(promote: bool) -> GateDecision:
    return GateDecision(promote=promote, reasons=["REGRESSED: model.token_f1"] if not promote else ["first release"])


def promoted() -> PromotionResult:
    return PromotionResult(promoted=True, unchanged=False, release_id="r-1", forced=False, decision=decision(True),
                           retention={"kept": ["r-1"]})


def refused() -> PromotionResult:
    return PromotionResult(promoted=False, release_id=None, decision=decision(False))


def page_evaluation(k: int) -> PageEvaluation:
    cutoffs = sorted({1, 5, 13, k})
    return PageEvaluation.model_validate({"hit@k": 0.5, "k": k, **{f"hit@{c}": 0.5 for c in cutoffs},
                                          "sourced_questions": 3, **{f"sourced_hit@{c}": 0.6 for c in cutoffs},
                                          "mode": "hybrid", "questions": 4, "collection": "eval_pages_docs"})


def pipeline_result(evaluated: bool = True) -> PipelineResult:
    scores = ModelComparison(base={"loss": 2.1, "too_long": 0}, candidate={"loss": 1.9, "too_long": 1})
    finetune = finetune_summary(**TRAINING_REPORT, **({"eval": scores, "eval_s": 30.0} if evaluated else {}))
    return PipelineResult(ingest=ingest_report(), dataset=dataset_summary(), finetune=finetune,
                          curves={"published": True}, evaluate=finetune.eval, promote=refused(),
                          seconds={"ingest": 5.0, "dataset": 9.0, "finetune": 100.0,
                                   "evaluate": finetune.eval_s, "promote": 20.0})


def dumped(result: Any) -> dict[str, Any]:
    return dict(json.loads(json.dumps(result.model_dump(mode="json"))))


def test_ingest_report_keys() -> None:
    data = dumped(ingest_report())
    assert list(data) == INGEST_KEYS
    assert list(data["quarantine"][0]) == ["uri", "reason", "doc_id"]
    assert list(data["embedding"]) == ["backend", "device", "precision", "bf16", "threads", "passes_by_threads",
                                       "calibration"]
    assert data["embedding"]["passes_by_threads"] == {"2": 3}
    assert dumped(ingest_report(embedding=None))["embedding"] is None
    markdown = report_markdown(ingest_report())
    assert "| added | 2 |" in markdown and "| file:///docs/bad.pdf | truncated / unreadable |" in markdown
    assert dumped(ingest_report())["skipped"] == {}  # a report from before the field reads as "nothing skipped"
    skipped = report_markdown(ingest_report(skipped={"symlink": 2, "hidden": 1}))
    assert "## Skipped" in skipped and "| symlink | 2 |" in skipped and "## Skipped" not in markdown


def test_the_ingest_completion_event_reads_a_typed_report() -> None:
    from deployments.events import ingest_event

    event = ingest_event("docs", "file:///docs", ingest_report(), min_changed=3)
    assert event["payload"] == {"changed": 3, "min_changed": 3, "added": 2, "updated": 1, "deleted": 0,
                                "unchanged": 4, "quarantined": 1}
    assert event["resource"]["ragtune.release-worthy"] == "true"


def test_dataset_summary_keys() -> None:
    assert list(dumped(dataset_summary())) == DATASET_KEYS


def test_finetune_summary_keeps_every_key_of_the_training_report() -> None:
    trained = dumped(finetune_summary(**TRAINING_REPORT))
    assert list(trained) == ["dataset", "run_dir", *TRAINING_REPORT, "train_s"]
    scores = ModelComparison(base={"loss": 2.0}, candidate={"loss": 1.0})
    evaluated = dumped(finetune_summary(**TRAINING_REPORT, eval=scores, eval_s=3.0))
    assert list(evaluated) == [*trained, "eval", "eval_s"] and list(evaluated["eval"]) == ["base", "candidate"]
    stopped = dumped(finetune_summary(event="stopped", step=7))  # a resumable run: no report fields, not nulls
    assert stopped == {"dataset": "a" * 64, "run_dir": "/runs/r", "event": "stopped", "step": 7, "train_s": 61.2}
    assert dumped(finetune_summary(**{**TRAINING_REPORT, "best_eval_loss": float("inf")}))["best_eval_loss"] == \
        float("inf")  # no eval yet: printed as Infinity, as before


def test_promotion_result_keys_when_promoted_and_when_refused() -> None:
    assert list(dumped(promoted())) == PROMOTED_KEYS
    assert list(dumped(promoted())["decision"]) == DECISION_KEYS
    assert dumped(refused()) == {"promoted": False, "release_id": None,
                                 "decision": decision(False).model_dump(mode="json")}


def test_retrieval_evaluation_keys() -> None:
    metrics = {"ndcg@10": 0.5, "recall@10": 0.6, "recall@100": 0.9, "mrr@10": 0.4}
    beir = BeirEvaluation.model_validate({**metrics, "dataset": "scifact", "mode": "dense", "queries": 300,
                                          "collection": "eval_beir_scifact", "chunks_written": 5000})
    assert list(dumped(beir)) == BEIR_KEYS and beir.ndcg_at_10 == 0.5
    assert list(dumped(page_evaluation(5))) == ["hit@k", "k", "hit@1", "hit@5", "hit@13", "sourced_questions",
                                                "sourced_hit@1", "sourced_hit@5", "sourced_hit@13", "mode",
                                                "questions", "collection"]
    pages = page_evaluation(3)
    assert list(pages.hits) == ["hit@1", "hit@3", "hit@5", "hit@13"] and "sourced_hit@3" in dumped(pages)
    assert PageEvaluation.model_validate(pages.model_dump(mode="json")) == pages  # the dump validates back


def test_pipeline_result_is_one_dict_per_stage_with_its_seconds() -> None:
    data = dumped(pipeline_result())
    assert list(data) == ["ingest", "dataset", "finetune", "curves", "evaluate", "promote"]
    assert list(data["ingest"]) == INGEST_KEYS and data["ingest"]["seconds"] == 5.0  # the stage's wall seconds
    assert list(data["dataset"]) == [*DATASET_KEYS, "seconds"] and data["curves"] == {"published": True}
    assert list(data["evaluate"]) == ["base", "candidate", "seconds"] and data["evaluate"]["seconds"] == 30.0
    assert list(data["promote"]) == ["promoted", "release_id", "decision", "seconds"]
    assert dumped(pipeline_result(evaluated=False))["evaluate"] == {"seconds": None}


def test_stage_summaries_read_the_typed_results() -> None:
    summary = pipeline_result().summary()
    assert list(summary) == list(STAGES)
    assert summary["ingest"] == {"added": 2, "updated": 1, "deleted": 0, "unchanged": 4, "quarantined": 1,
                                 "chunks_written": 30, "seconds": 5.0}
    assert summary["dataset"] == {"version": "a" * 64, "passed": True, "reused": False,
                                  "counts": {"train": 40, "eval": 10}, "warnings": ["label_drift"], "seconds": 9.0}
    assert list(summary["finetune"]) == ["dataset", "step", "best_step", "best_eval_loss", "stopped_early",
                                         "out_of_time", "world_size", "tokens_per_s", "train_s", "seconds"]
    assert summary["evaluate"] == {"base": {"loss": 2.1}, "candidate": {"loss": 1.9}, "seconds": 30.0}
    assert summary["promote"] == {"promoted": False, "release_id": None, "reasons": ["REGRESSED: model.token_f1"],
                                  "seconds": 20.0}
    assert stage_summary("promote", promoted(), 1.0) == {"promoted": True, "unchanged": False, "release_id": "r-1",
                                                         "forced": False, "reasons": ["first release"], "seconds": 1.0}
    stopped = stage_summary("finetune", finetune_summary(event="stopped", step=7), 2.0)
    assert stopped == {"dataset": "a" * 64, "step": 7, "train_s": 61.2, "seconds": 2.0}


@pytest.mark.parametrize(("flow", "result"), [
    (ingest_documents, IngestReport), (reindex_document, IngestReport), (build_dataset, DatasetSummary),
    (finetune_model, FinetuneSummary), (promote_release, PromotionResult), (evaluate_beir, BeirEvaluation),
    (evaluate_pages, PageEvaluation), (release_pipeline, PipelineResult)])
def test_every_flow_returns_its_typed_result(flow: Any, result: type) -> None:
    assert typing.get_type_hints(flow.fn)["return"] is result


def test_json_output_prints_the_dumped_keys(capsys: pytest.CaptureFixture[str]) -> None:
    emit(promoted(), as_json=True)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == promoted().model_dump(mode="json") and list(json.loads(line)) == sorted(PROMOTED_KEYS)
    emit(refused(), as_json=False, human=lambda r: f"promoted={r.promoted}")  # the human form reads fields
    assert capsys.readouterr().out == "promoted=False\n"
