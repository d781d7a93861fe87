"""Keep a Milvus collection in step with a folder or S3 prefix: list, diff, parse, chunk, embed, write.

Parameters (shown as a form in the Prefect UI):
    source: a local folder, ``file:///dir`` or ``s3://bucket/prefix``.
    collection: the serving alias (default: settings.milvus.collection, "docs"); the run writes into
        the generation it points to, creating ``<alias>__g1`` and the alias when none exists.
    force: allow a run that would delete more than settings.ingest.deletion_guard of the index.
    rebuild: write everything into a new generation beside the live one (new embedding model or
        chunker settings); it is served only after promotion switches the alias.

Run it locally with ``python -m flows.ingest SOURCE [COLLECTION]``.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from tasks.ingest.batch import index_batch
from tasks.ingest.inventory import open_source
from tasks.ingest.plan import batched, collection_lock, delete_removed, finish, open_run, plan
from tasks.ingest.report import IngestReport, publish_report
from tasks.runtime.process import process_settings


@flow(name="ingest-documents")
def ingest_documents(source: str, collection: str = "", force: bool = False, rebuild: bool = False) -> IngestReport:
    """Index what was added or changed, delete what was removed, flush, and report.

    Args:
        source: A local folder, file:///dir or s3://bucket/prefix.
        collection: Serving alias; empty = settings.milvus.collection. The run writes into the generation it points to.
        force: Allow a run that would delete more than settings.ingest.deletion_guard of the index.
        rebuild: Write everything into a new generation beside the live one; served only after promotion.
    """
    settings = process_settings()
    alias = collection or settings.milvus.collection
    with collection_lock(alias), open_run(settings, open_source(source, settings), alias, rebuild) as run:
        diff = plan(run, force)
        get_run_logger().info("%s: %d to index, %d unchanged, %d removed", source, len(diff.todo),
                              len(diff.unchanged), len(diff.removed))
        batches = list(batched(diff.todo, settings.ingest.batch_docs))
        for batch, upcoming in zip(batches, [*batches[1:], []], strict=False):
            index_batch(run, batch, upcoming)  # the next batch parses while this one embeds
        if diff.removed:
            delete_removed(run, diff.removed)
        report = finish(run)
    publish_report(report)
    return report


if __name__ == "__main__":
    ingest_documents(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
