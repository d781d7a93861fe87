"""The ingestion run's result (``IngestReport``) and its Prefect artifact: counts, timings, the quarantine.

``IngestReport.model_dump(mode="json")`` is what ``ragtune ingest --json`` prints: its keys are a
contract scripts rely on (tests/test_flow_results.py pins them).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class QuarantinedFile(BaseModel):
    """A document this run could not index, and why (it is retried only once it changes)."""

    uri: str
    reason: str
    doc_id: str


class EmbeddingStats(BaseModel):
    """How the embedder ran: backend, device, precision, threads per pass, the backends' timings ("auto")."""

    backend: str = Field("torch", description="torch, onnx, onnx-int8, openvino or openvino-int8 "
                         "(tasks.ingest.embedding).")
    device: str = "cpu"
    precision: str = Field("fp32", description="fp32, fp16, bf16 or int8.")
    bf16: bool | None
    threads: int
    passes_by_threads: dict[int, int]
    calibration: dict[str, float]


class IngestReport(BaseModel):
    """What one ingestion (or re-index) run changed in a collection generation, and how long each stage took."""

    source: str
    collection: str = Field(description="The physical generation written to.")
    added: int
    updated: int
    deleted: int
    unchanged: int
    quarantined: int = Field(description="Documents quarantined by this run.")
    quarantine: list[QuarantinedFile]
    still_quarantined: int = Field(description="Unchanged documents an earlier run quarantined (not retried).")
    skipped: dict[str, int] = Field(default_factory=dict, description=(
        "Source entries left out on purpose, by reason: hidden, symlink, special file, unreadable."))
    chunks_written: int
    chunks_reused: int = Field(description="Vectors taken from the index instead of re-embedding.")
    seconds: dict[str, float] = Field(description="Seconds per stage (list, parse, embed, write, flush...).")
    chunks_per_s: float
    embedding: EmbeddingStats | None = Field(description="None when nothing was embedded in this process.")
    shards: int = Field(0, description="Shard runs whose reports this one sums (0: the run was not sharded).")


def publish_report(report: IngestReport, key: str = "ingest-report") -> None:
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import get_run_context

    try:
        get_run_context()
    except RuntimeError:
        return  # called outside a flow run (a plain function call in a test): nothing to attach to
    create_markdown_artifact(markdown=report_markdown(report), key=key, description="ragtune ingestion run")


def report_markdown(report: IngestReport) -> str:
    r = report
    counts = {"added": r.added, "updated": r.updated, "deleted": r.deleted, "unchanged": r.unchanged,
              "quarantined": r.quarantined, "still_quarantined": r.still_quarantined,
              "chunks_written": r.chunks_written, "chunks_reused": r.chunks_reused, "chunks_per_s": r.chunks_per_s}
    lines = [f"# Ingestion of `{r.source}` into `{r.collection}`", "", "| count | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in counts.items()]
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {secs} |" for stage, secs in r.seconds.items()]
    if r.skipped:
        lines += ["", "## Skipped", "", "| reason | entries |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in r.skipped.items()]
    if r.quarantine:
        lines += ["", "## Quarantined", "", "| document | reason |", "|---|---|"]
        lines += [f"| {q.uri} | {q.reason.replace('|', '/')} |" for q in r.quarantine]
    return "\n".join(lines)
