"""Keep a Milvus collection in step with a folder or S3 prefix: list, diff, parse, chunk, embed, write.

Parameters (shown as a form in the Prefect UI):
    source: a local folder, ``file:///dir`` or ``s3://bucket/prefix``.
    collection: the serving alias (default: settings.milvus.collection, "docs"); the run writes into
        the generation it points to, creating ``<alias>__g1`` and the alias when none exists.
    force: allow a run that would delete more than settings.ingest.deletion_guard of the index.
    rebuild: write everything into a new generation beside the live one (new embedding model or
        chunker settings); it is served only after promotion switches the alias.
    shards: split the documents into this many shards, each a run of the deployment through the work
        pool (tasks/ingest/shards.py); this run waits for them, then deletes, flushes and reports.
    shard: set by a sharded parent only ("i/N"): index that shard's documents, delete nothing.

Run it locally with ``python -m flows.ingest SOURCE [COLLECTION]``.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from tasks.ingest.batch import index_batch
from tasks.ingest.inventory import Diff, open_source
from tasks.ingest.plan import (
    Run,
    batched,
    collection_lock,
    delete_removed,
    finish,
    open_run,
    plan,
    ready_to_write,
)
from tasks.ingest.report import IngestReport, publish_report
from tasks.ingest.shards import Shard, require_shardable, run_shards, sharded_report, shards_with_work
from tasks.runtime.process import process_settings


@flow(name="ingest-documents", persist_result=True)  # a sharded parent reads its shards' reports
def ingest_documents(source: str, collection: str = "", force: bool = False, rebuild: bool = False,
                     shards: int = 1, shard: str = "") -> IngestReport:
    """Index what was added or changed, delete what was removed, flush, and report.

    Args:
        source: A local folder, file:///dir or s3://bucket/prefix.
        collection: Serving alias; empty = settings.milvus.collection. The run writes into the generation it points to.
        force: Allow a run that would delete more than settings.ingest.deletion_guard of the index.
        rebuild: Write everything into a new generation beside the live one; served only after promotion.
        shards: Split the documents into this many shard runs on the work pool (needs a Milvus server); 1 = no split.
        shard: Set by a sharded run for its shards ("i/N"); leave empty.
    """
    settings = process_settings()
    alias = collection or settings.milvus.collection
    if part := Shard.parse(shard):  # the parent holds the collection lock and deletes; a shard only indexes
        with open_run(settings, open_source(source, settings), alias) as run:
            index_documents(run, plan(run, shard=part))
            report = finish(run)
        publish_report(report, key=f"ingest-shard-{part.index}-of-{part.count}")
        return report
    require_shardable(settings, shards)
    with collection_lock(alias), open_run(settings, open_source(source, settings), alias, rebuild) as run:
        diff = plan(run, force)
        get_run_logger().info("%s: %d to index, %d unchanged, %d removed", source, len(diff.todo),
                              len(diff.unchanged), len(diff.removed))
        if shards > 1:
            with run.stats.timed("shards"):  # the shards write into the generation this run resolved
                done = run_shards(settings.ingest, source, run.collection, shards_with_work(diff.todo, shards))
        else:
            index_documents(run, diff)
        if diff.removed:  # only after every shard finished: the deletion guard saw the whole listing
            delete_removed(run, diff.removed)
        report = sharded_report(run, done) if shards > 1 else finish(run)
    publish_report(report)
    return report


def index_documents(run: Run, diff: Diff) -> None:
    """The listing's added and changed documents in growing batches; the next batch parses while one embeds."""
    batches = list(batched(diff.todo, run.settings.ingest.batch_docs))
    if not batches:
        return  # an unchanged re-run: no parser, no model
    ready_to_write(run, len(batches[0]))
    for batch, upcoming in zip(batches, [*batches[1:], []], strict=False):
        index_batch(run, batch, upcoming)


if __name__ == "__main__":
    ingest_documents(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
