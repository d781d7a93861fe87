"""The steps of ``build_dataset``, each a batch-level function: prepare, validate, quarantine, publish.

Each is a Prefect task, uncached (NO_CACHE: the inputs are whole datasets; hashing them for a cache
key would cost more than the step); logic tests call them through ``.fn``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.dataset import rows as ds
from tasks.dataset import versions as store
from tasks.dataset.examples import ColumnMapping, load_examples
from tasks.dataset.gx import DatasetGateConfig, GateReport
from tasks.settings import Settings


@dataclass
class PreparedExamples:
    """Rows ready for the gate, with what the manifest records of how they were made."""

    rows: list[ds.DatasetRow]
    sources: list[dict[str, Any]]
    mapping: dict[str, Any]
    seed: int
    removed: dict[str, Any]
    grounded: dict[str, Any] | None = None


@lru_cache(maxsize=2)
def tokenizer_for(settings_cache: str, override: str) -> Any:
    from pathlib import Path

    return ds.load_generator_tokenizer(Path(settings_cache), override)


@task(name="prepare-examples", cache_policy=NO_CACHE)
def prepare_examples(settings: Settings, examples: str, mapping: str, seed: int,
                     grounded_from: str | None = None) -> PreparedExamples:
    """Load, de-duplicate, split by group, add grounded and abstention rows, count tokens."""
    cfg = settings.dataset
    column_mapping = ColumnMapping.parse(mapping)
    curated, source = load_examples(settings, examples, column_mapping)
    dedup = ds.deduplicate(curated, cfg.near_duplicate_jaccard)
    splits = ds.assign_splits((e.group for e in dedup.kept), cfg.eval_share, seed)
    tokenizer = tokenizer_for(str(settings.cache_dir), settings.models.generator)
    rows = ds.curated_rows(dedup.kept, splits, _context_renderer(tokenizer))
    grounded = _add_grounded(settings, tokenizer, rows, grounded_from, seed) if grounded_from else None
    ds.set_token_counts(tokenizer, rows)
    removed = {"exact_duplicates": len(dedup.exact), "near_duplicates": len(dedup.near),
               "samples": [{"removed": a, "kept": b} for a, b in (dedup.exact + dedup.near)[:10]]}
    return PreparedExamples(rows, [asdict(source)], column_mapping.as_dict(), seed, removed, grounded)


def _context_renderer(tokenizer: Any) -> Any:
    from tasks.dataset import grounding
    specials = list(tokenizer.all_special_tokens)

    def render(question: str, passages: list[str], answer: str) -> list[dict[str, str]]:
        return grounding.training_messages(question, passages, answer, specials)

    return render


def _add_grounded(settings: Settings, tokenizer: Any, rows: list[ds.DatasetRow], collection: str,
                  seed: int) -> dict[str, Any]:
    from tasks.dataset import grounding
    cfg = settings.dataset
    curated = [r for r in rows if r.question and r.response and r.group]
    retrieved, served_by = grounding.retrieve_passages(settings, collection, curated, cfg.grounded_k)
    grounded = grounding.grounded_rows(tokenizer, curated, retrieved, cfg)
    counts = grounding.abstain_counts(grounded, cfg.abstain_share)
    abstain = grounding.abstain_rows(tokenizer, curated, retrieved, counts, cfg, seed)
    rows.extend(grounded + abstain)
    return {"collection": collection, "served_by": served_by, "k": cfg.grounded_k, "mode": settings.answer.mode,
            "chunks_per_page": settings.answer.chunks_per_page, "questions": len(curated), "grounded": len(grounded),
            "abstain": len(abstain), "support_threshold": cfg.support_threshold}


@task(name="validate-examples", cache_policy=NO_CACHE)
def validate_examples(settings: Settings, prepared: PreparedExamples, name: str) -> GateReport:
    """The gate, against the last accepted version of ``name`` when there is one (label drift)."""
    from tasks.dataset import gx
    previous, labels = store.accepted_version(settings, name), None
    if previous is not None:
        labels = store.load_dataset_version(settings, previous).manifest.get("label_distribution")
    cfg = DatasetGateConfig.from_settings(settings.dataset, labels, previous)
    return gx.validate(ds.gate_frame(prepared.rows), cfg)


@task(name="quarantine-examples", cache_policy=NO_CACHE)
def quarantine_examples(settings: Settings, prepared: PreparedExamples, report: GateReport,
                        run_id: str) -> dict[str, str]:
    """Rows a failed expectation flagged (with the names of those expectations), the GX result, the report."""
    reasons = report.reasons_by_id()
    flagged = [{"id": r.id, "reasons": reasons[r.id], "split": r.split, "label": r.label, "question": r.question,
                **r.record()} for r in prepared.rows if r.id in reasons]
    files = {"rows.jsonl": store.encode_jsonl(flagged), "validation.json": _json(report.gx_result),
             "report.md": gate_markdown(report, f"refused (run {run_id})").encode()}
    return store.write_quarantine(settings, run_id, files)


def refuse(report: GateReport, where: dict[str, str]) -> store.GateFailedError:
    return store.GateFailedError(f"{report.message()}; quarantined rows and GX result: {where['s3']}",
                                 [o.name for o in report.failed], where)


@task(name="publish-dataset", cache_policy=NO_CACHE)
def publish_dataset(settings: Settings, prepared: PreparedExamples, report: GateReport, name: str,
                    run_id: str = "") -> tuple[store.DatasetVersion, bool]:
    """Write the passed dataset as a content-addressed version (S3 and local cache); point ``name`` at it."""
    if not report.success:
        raise store.DatasetError("refusing to publish a dataset whose gate failed")
    splits = {s: sorted((r for r in prepared.rows if r.split == s), key=lambda r: r.id) for s in ds.SPLITS}
    files = {f"{s}.jsonl": store.encode_jsonl(r.record() for r in rows) for s, rows in splits.items()}
    version = store.version_id(files)
    files["validation.json"] = _json(report.gx_result)
    manifest = dataset_manifest(settings, prepared, report, name, version, run_id)
    manifest["files"] = store.file_entries(files)
    return store.publish_version(settings, name, files, manifest)


def dataset_manifest(settings: Settings, prepared: PreparedExamples, report: GateReport, name: str, version: str,
                     run_id: str) -> dict[str, Any]:
    """The dataset version's manifest.json: provenance, counts, token statistics, the gate's result."""
    rows = prepared.rows
    counts = ds.counts(rows)
    counts["by_kind_total"] = {k: sum(1 for r in rows if r.kind == k) for k in ds.KINDS}
    counts["removed"] = {k: v for k, v in prepared.removed.items() if k != "samples"}
    return {
        "version": version, "name": name, "created": datetime.now(UTC).isoformat(), "run_id": run_id,
        "sources": prepared.sources, "mapping": prepared.mapping, "seed": prepared.seed,
        "eval_share": settings.dataset.eval_share, "max_seq_len": settings.dataset.max_seq_len,
        "tokenizer": _tokenizer_name(settings), "row_format": "chat messages; n_tokens = chat-template render",
        "abstain_answer": ds.ABSTAIN_ANSWER, "counts": counts,
        "tokens": {s: ds.token_stats([r for r in rows if r.split == s]) for s in ds.SPLITS},
        "label_distribution": ds.label_distribution(rows), "grounded": prepared.grounded,
        "removed_samples": prepared.removed.get("samples", []), "previous_version": report.config.previous_version,
        "gate": {"success": report.success, "expectations": report.summary()}, "gx_result": report.gx_result,
    }


def _tokenizer_name(settings: Settings) -> str:
    from tasks.runtime.sources import GENERATOR_MODEL_NAME

    return settings.models.generator or GENERATOR_MODEL_NAME


def gate_markdown(report: GateReport, outcome: str) -> str:
    lines = [f"# Dataset gate: {'passed' if report.success else 'FAILED'}", "", outcome, "",
             "| expectation | severity | result | observed | unexpected rows |", "|---|---|---|---|---|"]
    for o in report.outcomes:
        mark = "pass" if o.success else ("FAIL" if o.severity == "critical" else "warn")
        observed = "" if o.observed is None else json.dumps(o.observed, default=str)[:60]
        lines.append(f"| {o.name} | {o.severity} | {mark} | {observed} | {o.unexpected_count} |")
    for o in report.failed + report.warnings:
        lines += ["", f"**{o.name}**: {o.describe(5)}"]
    return "\n".join(lines) + "\n"


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")
