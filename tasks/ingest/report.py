"""Run reports as Prefect artifacts: a table of counts and timings, and the quarantine with reasons."""

from __future__ import annotations

from typing import Any


def publish_report(report: dict[str, Any], key: str = "ingest-report") -> None:
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import get_run_context

    try:
        get_run_context()
    except RuntimeError:
        return  # called outside a flow run (a plain function call in a test): nothing to attach to
    create_markdown_artifact(markdown=report_markdown(report), key=key, description="ragtune ingestion run")


def report_markdown(report: dict[str, Any]) -> str:
    counts = ("added", "updated", "deleted", "unchanged", "quarantined", "still_quarantined", "chunks_written",
              "chunks_reused", "chunks_per_s")
    lines = [f"# Ingestion of `{report.get('source', '')}` into `{report.get('collection', '')}`", "",
             "| count | value |", "|---|---|"]
    lines += [f"| {name} | {report.get(name, '')} |" for name in counts]
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {secs} |" for stage, secs in report.get("seconds", {}).items()]
    if report.get("quarantine"):
        lines += ["", "## Quarantined", "", "| document | reason |", "|---|---|"]
        lines += [f"| {q['uri']} | {q['reason'].replace('|', '/')} |" for q in report["quarantine"]]
    return "\n".join(lines)
