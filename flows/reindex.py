"""Re-index exactly the documents named by events: ``ragtune.document.changed`` / ``.deleted``.

Parameters:
    uris: document URIs (the events' resource ids), e.g. ``file:///docs/a.md`` or ``s3://b/p/a.md``;
        duplicates are dropped, and a document whose size and version match the index's record is
        skipped, so repeated events for one document version cost a stat each.
    source: the root the documents belong to (the event's ``ragtune.source`` resource label, which
        ``ragtune watch`` sets); empty = the source recorded for the document, else its folder/bucket.
    collection: the serving alias (default: settings.milvus.collection).
Whether a document changed or was deleted is read from the source itself, not from the event
name, so out-of-order events cannot resurrect a deleted document.

Self-hosted Prefect has no webhooks: an external system emits these events through the Prefect
API (``prefect event emit ragtune.document.changed --resource-id file:///... ``, or
``prefect.events.emit_event`` / ``POST /api/events``); a deployment trigger (prefect.yaml) runs this flow.
Run it locally with ``python -m flows.reindex URI [URI ...]``.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from tasks.ingest.batch import index_batch
from tasks.ingest.inventory import open_source
from tasks.ingest.plan import (
    collection_lock,
    delete_removed,
    finish,
    open_run,
    plan_documents,
    ready_to_write,
    source_for,
)
from tasks.ingest.report import IngestReport, publish_report
from tasks.runtime.process import process_settings


@flow(name="reindex-document")
def reindex_document(uris: list[str], source: str = "", collection: str = "") -> IngestReport:
    """Index the named documents that changed and delete the ones that are gone; nothing else.

    Args:
        uris: Document URIs (the events' resource ids), e.g. file:///docs/a.md or s3://bucket/docs/a.md.
        source: Root the documents belong to; empty = the source recorded for the document, else its folder.
        collection: Serving alias; empty = settings.milvus.collection.
    """
    settings = process_settings()
    alias = collection or settings.milvus.collection
    root = source or source_for(settings, alias, uris[0])
    with collection_lock(alias), open_run(settings, open_source(root, settings), alias) as run:
        todo, gone = plan_documents(run, uris)
        get_run_logger().info("%d document(s) to index, %d to delete, %d unchanged", len(todo), len(gone),
                              run.stats.unchanged)
        if todo:
            ready_to_write(run, len(todo))
            index_batch(run, todo)
        if gone:
            delete_removed(run, gone)
        report = finish(run)
    publish_report(report, key="reindex-report")
    return report


if __name__ == "__main__":
    reindex_document(sys.argv[1:])
