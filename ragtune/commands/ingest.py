"""`ragtune ingest SOURCE`, `ragtune index verify`, `ragtune watch SOURCE`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ragtune.commands._common import JsonOption, UserError, clear_errors, emit, subgroup

if TYPE_CHECKING:
    from tasks.ingest.report import IngestReport

CollectionOption = typer.Option("", "--collection", help="Serving alias; empty = settings.milvus.collection.")


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("watch")(watch)
    subgroup(app, "index", "The document index: verify, restore from a release.").command("verify")(verify)


@clear_errors
def ingest(
    source: str = typer.Argument(..., help="A folder, file:///dir or s3://bucket/prefix."),
    collection: str = CollectionOption,
    force: bool = typer.Option(False, "--force", help="Allow deleting more than the guard share of the index."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Write a new generation (served after promotion)."),
    shards: int = typer.Option(1, "--shards", min=1, help="Split the documents into N shard runs of the "
                               "ingest-documents deployment on the work pool (needs a Prefect server, workers and "
                               "a Milvus server); this process waits, then deletes, flushes and reports."),
    as_json: bool = JsonOption,
) -> None:
    """Bring the index in step with SOURCE: index added/changed documents, delete removed ones."""
    from flows.ingest import ingest_documents
    from tasks.ingest.plan import DeletionGuardError
    from tasks.ingest.shards import ShardingError
    from tasks.stores.milvus import MilvusIndexError

    try:
        report = ingest_documents(source, collection, force, rebuild, shards)
    except (DeletionGuardError, MilvusIndexError, ShardingError) as exc:
        raise UserError(str(exc)) from None
    emit(report, as_json, _summary)


@clear_errors
def verify(
    collection: str = CollectionOption,
    repair: bool = typer.Option(True, "--repair/--check-only", help="Delete orphans, mark mismatches pending."),
    sample: int = typer.Option(200, help="Documents whose chunk ids are checked one by one."),
    as_json: bool = JsonOption,
) -> None:
    """Check the index's record against the chunks in Milvus (counts per document, sampled ids)."""
    from tasks.ingest.verify import verify_index
    from tasks.settings import get_settings
    from tasks.stores.milvus import IndexClient, MilvusIndexError

    settings = get_settings()
    try:
        with IndexClient.from_settings(settings) as index:
            result = verify_index(index, collection or settings.milvus.collection, repair, sample)
    except MilvusIndexError as exc:
        raise UserError(str(exc)) from None
    emit(result, as_json, lambda r: (f"{r['collection']}: {r['documents']} documents, {r['chunks']} chunks, "
                                     f"{r['orphan_documents']} orphan documents, "
                                     f"{len(r['mismatched_documents'])} mismatched"
                                     + (" (repaired: run `ragtune ingest` to re-index)" if r["repaired"] else "")
                                     + ("" if r["ok"] else "" if r["repaired"] else " -- NOT OK")))
    if not result["ok"] and not repair:
        raise typer.Exit(1)


@clear_errors
def watch(
    source: str = typer.Argument(..., help="A folder, file:///dir or s3://bucket/prefix."),
    interval: float = typer.Option(0.0, help="Polling seconds; 0 = settings.ingest.watch_interval_s."),
    once: bool = typer.Option(False, "--once", help="Poll twice (baseline, then changes) and exit."),
    as_json: bool = JsonOption,
) -> None:
    """Emit ragtune.document.changed/deleted Prefect events (resource id = document URI) as SOURCE changes."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.ingest.inventory import open_source
    from tasks.ingest.watch import watch_source
    from tasks.settings import get_settings

    settings = get_settings()
    api = settings.prefect.api_url or PREFECT_API_URL.value()
    if not api:  # an ephemeral API would swallow the events: no deployment trigger could see them
        raise UserError("ragtune watch emits events to a Prefect server: run `ragtune stack up` and set "
                        "RAGTUNE_PREFECT__API_URL (or PREFECT_API_URL)")
    src = open_source(source, settings)
    with temporary_settings({PREFECT_API_URL: api}):
        emitted = watch_source(src, interval or settings.ingest.watch_interval_s, settings.ingest.debounce_s,
                               polls=2 if once else None, echo=lambda line: typer.echo(line, err=True))
    emit({"source": src.uri, "events": emitted}, as_json, lambda r: f"{len(r['events'])} events emitted")


def _summary(r: IngestReport) -> str:
    lines = [f"{r.collection}: +{r.added} added, ~{r.updated} updated, -{r.deleted} deleted, "
             f"{r.unchanged} unchanged, {r.quarantined} quarantined, {r.chunks_written} chunks "
             f"({r.chunks_per_s} chunks/s)" + (f" in {r.shards} shard runs" if r.shards else "")]
    if r.skipped:
        lines.append("  skipped (not documents): " + ", ".join(f"{n} {why}" for why, n in r.skipped.items()))
    lines += [f"  quarantined {q.uri}: {q.reason}" for q in r.quarantine]
    return "\n".join(lines)
