"""`ragtune dataset build|show`: validated, versioned training datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from ragtune.commands._common import JsonOption, UserError, clear_errors, emit, subgroup

if TYPE_CHECKING:
    from flows.dataset import DatasetSummary


def register(app: typer.Typer) -> None:
    group = subgroup(app, "dataset", "Build and inspect validated, versioned training datasets.")
    group.command("build")(build)
    group.command("show")(show)


@clear_errors
def build(
    examples: str = typer.Option(..., "--examples", help="Curated examples: .jsonl/.csv/.parquet/.json, path or s3://"),
    mapping: str = typer.Option("default", "--mapping", help="Preset (default, bitext, pubmedqa) or "
                                "field=column pairs, e.g. prompt=instruction,response=response,group=intent"),
    grounded_from: str | None = typer.Option(None, "--grounded-from", help="Add grounded and abstention examples "
                                             "with context retrieved from this collection."),
    name: str | None = typer.Option(None, "--name", help="Dataset name (drift baseline); default: the file's stem."),
    seed: int = typer.Option(13, "--seed", help="Seed of the group split and sampling."),
    eval_share: float | None = typer.Option(None, "--eval-share", help="Target eval share (settings default)."),
    max_seq_len: int | None = typer.Option(None, "--max-seq-len", help="Longest example in tokens (settings default)."),
    as_json: bool = JsonOption,
) -> None:
    """Build a dataset version; exits 1 with the failing expectations when the gate refuses the examples."""
    from flows.dataset import build_dataset
    from tasks.dataset.versions import GateFailedError

    try:
        result = build_dataset(examples, mapping, grounded_from, name, seed, eval_share, max_seq_len)
    except GateFailedError as exc:
        if as_json:
            emit({"passed": False, "failed": exc.failed, "quarantine": exc.quarantine, "error": str(exc)}, True)
        raise UserError(str(exc)) from None
    emit(result, as_json, _human_build)


@clear_errors
def show(version: str = typer.Argument(..., help="Version id (64 hex) or dataset name (its accepted version)."),
         as_json: bool = JsonOption) -> None:
    """A dataset version's manifest: sources, counts, token statistics and gate results."""
    from tasks.dataset.versions import load_dataset_version
    from tasks.settings import get_settings

    found = load_dataset_version(get_settings(), version)
    manifest = {k: v for k, v in found.manifest.items() if k != "gx_result"}
    emit({**manifest, "passed": found.passed, "path": str(found.path)}, as_json, _human_show)


def _human_build(r: DatasetSummary) -> str:
    c, t = r.counts, r.tokens
    lines = [f"dataset {r.name}: {r.version}{' (unchanged)' if r.reused else ''}",
             f"  rows: train {c['train']}, eval {c['eval']} (groups {c['groups']['train']}/{c['groups']['eval']}); "
             f"by kind {c['by_kind_total']}; removed duplicates {c['removed']}",
             f"  tokens: train mean {t['train'].get('mean')} max {t['train'].get('max')}; "
             f"eval mean {t['eval'].get('mean')} max {t['eval'].get('max')}",
             f"  cached at {r.path}"]
    if r.warnings:
        lines.append(f"  warnings: {', '.join(r.warnings)}")
    return "\n".join(lines)


def _human_show(m: dict[str, Any]) -> str:
    gate = ", ".join(f"{e['name']}={'ok' if e['success'] else 'FAIL' if e['severity'] == 'critical' else 'warn'}"
                     for e in m["gate"]["expectations"])
    sources = "; ".join(f"{s['uri']} (sha256 {s['sha256'][:12]}, {s['rows']} rows)" for s in m["sources"])
    return "\n".join([f"dataset {m['name']}: {m['version']} ({'passed' if m['passed'] else 'NOT PASSED'})",
                      f"  created {m['created']}; seed {m['seed']}; max_seq_len {m['max_seq_len']}",
                      f"  sources: {sources}", f"  counts: {m['counts']}", f"  tokens: {m['tokens']}",
                      f"  gate: {gate}", f"  files: {m['path']}"])
