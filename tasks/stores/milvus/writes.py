"""Writes: chunk rows (upsert, delete, flush, bulk insert and import) and the per-document record.

Writes are keyed by identity: a chunk's id is its document id + chunk index, so rewriting a document
upserts its chunks and deletes the ones beyond its new count. The record collection beside
each generation holds one ``DocRecord`` per document (what the index contains for it).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from tasks.stores.analyzer import analyze
from tasks.stores.milvus.connection import Connection
from tasks.stores.milvus.errors import MilvusIndexError
from tasks.stores.milvus.fields import RECORD_FIELDS, clip, in_list, quote, record_name
from tasks.types import Chunk, DocRecord


class Writes(Connection):
    """Chunk rows and document records in, out and flushed."""

    def upsert_chunks(self, collection: str, chunks: Sequence[Chunk], vectors: Any,
                      new_documents: Collection[str] = frozenset()) -> int:
        """Write chunks (with their vectors) and drop the same documents' chunks beyond the new count.

        ``new_documents``: documents the caller knows have no chunk in the index (no record: an ingestion
        records a document as pending before it writes a chunk), so there is nothing of theirs to drop."""
        collection = self._use(collection)
        vecs = vectors.tolist() if hasattr(vectors, "tolist") else [list(v) for v in vectors]
        rows = [{"id": c.id, "doc_id": c.doc_id, "vector": v, "text": clip(c.text), **_meta_row(c)}
                for c, v in zip(chunks, vecs, strict=True)]
        if self._lexical(collection):
            for row in rows:
                row["lexical"] = clip(analyze(row["text"]))
        for start in range(0, len(rows), 500):
            self._c.upsert(collection, rows[start:start + 500])
        counts: dict[str, int] = {}
        for c in chunks:
            if c.doc_id not in new_documents:
                counts[c.doc_id] = max(counts.get(c.doc_id, 0), c.chunk_index + 1)
        stale = [f"(doc_id == {quote(d)} and chunk_index >= {n})" for d, n in counts.items()]
        for start in range(0, len(stale), 50):  # one delete per 50 documents: a delete is ~15 ms however small
            self._c.delete(collection, filter=" or ".join(stale[start:start + 50]))
        return len(rows)

    def delete_documents(self, collection: str, doc_ids: Iterable[str]) -> None:
        collection = self._use(collection)
        ids = list(doc_ids)
        for start in range(0, len(ids), 200):
            self._c.delete(collection, filter=f"doc_id in {in_list(ids[start:start + 200])}")

    def flush(self, collection: str) -> None:
        """Flush after writes: Milvus Lite searches unflushed rows by brute force, many times slower than the
        flushed, indexed ones (docs/retrieval.md)."""
        self._c.flush(collection)

    def insert_rows(self, collection: str, rows: Sequence[dict[str, Any]]) -> int:
        """Bulk insert rows as ``iter_rows`` yields them (snapshot restore); ``lexical``/``sparse`` are recomputed."""
        collection = self._use(collection)
        lexical = self._lexical(collection)
        for start in range(0, len(rows), 1000):
            batch = [{k: v for k, v in r.items() if k not in ("sparse", "lexical")} for r in rows[start:start + 1000]]
            if lexical:
                for row in batch:
                    row["lexical"] = clip(analyze(row["text"]))
            self._c.upsert(collection, batch)
        return len(rows)

    def bulk_import(self, collection: str, files: Sequence[str], timeout_s: float = 600.0) -> int:
        """Milvus' bulk import of Parquet files the *server* reads from its own storage (a standalone's
        local disk, a cluster's bucket), one task per file as Milvus 2.3 requires, all submitted before
        waiting (each waits ~2 s for the server to mark it completed); returns the rows imported.

        The collection is released during the import and loaded after it: Milvus 2.3 does not show
        imported segments to a collection that was loaded before (count(*) stays 0 until a reload).
        pymilvus' only bulk-insert verbs for Milvus < 2.4 are the ORM's (deprecated, gone in pymilvus 3.1),
        so this calls the client's own gRPC handler, which those verbs wrap.
        """
        physical = self._use(collection)
        handler = self._c._get_connection()
        self._c.release_collection(physical)
        self._loaded.discard(physical)
        tasks = {file: handler.do_bulk_insert(physical, "", [file]) for file in files}  # queued together
        rows = sum(_wait_for_import(handler, task, file, timeout_s) for file, task in tasks.items())
        self._use(physical)
        return rows

    # --- the record -------------------------------------------------------------------------------
    def read_records(self, collection: str, source: str | None = None) -> dict[str, DocRecord]:
        name = record_name(self._use(collection))
        flt = f"source == {quote(source)}" if source is not None else ""
        it = self._c.query_iterator(name, batch_size=2000, filter=flt, output_fields=list(RECORD_FIELDS))
        out: dict[str, DocRecord] = {}
        try:
            while batch := it.next():
                out.update((r["doc_id"], DocRecord(**{k: r[k] for k in RECORD_FIELDS})) for r in batch)
        finally:
            it.close()
        return out

    def get_records(self, collection: str, doc_ids: Sequence[str]) -> dict[str, DocRecord]:
        if not doc_ids:
            return {}
        name = record_name(self._use(collection))
        rows = self._c.query(name, filter=f"doc_id in {in_list(list(doc_ids))}", output_fields=list(RECORD_FIELDS))
        return {r["doc_id"]: DocRecord(**{k: r[k] for k in RECORD_FIELDS}) for r in rows}

    def write_records(self, collection: str, records: Sequence[DocRecord]) -> None:
        name = record_name(self._use(collection))
        now = time.time()
        rows = [{**{k: getattr(r, k) for k in RECORD_FIELDS}, "updated_at": r.updated_at or now,
                 "reason": r.reason[:4000], "unused": [0.0, 0.0]} for r in records]
        for start in range(0, len(rows), 1000):
            self._c.upsert(name, rows[start:start + 1000])

    def delete_records(self, collection: str, doc_ids: Sequence[str]) -> None:
        name = record_name(self._use(collection))
        for start in range(0, len(doc_ids), 200):
            self._c.delete(name, filter=f"doc_id in {in_list(list(doc_ids[start:start + 200]))}")
        self._c.flush(name)

    def flush_records(self, collection: str) -> None:
        self._c.flush(record_name(self._use(collection)))


def _wait_for_import(handler: Any, task: int, file: str, timeout_s: float) -> int:
    from pymilvus.client.types import BulkInsertState

    deadline = time.monotonic() + timeout_s
    while True:
        state = handler.get_bulk_insert_state(task)
        if state.state == BulkInsertState.ImportCompleted:
            return int(state.row_count)
        if state.state in (BulkInsertState.ImportFailed, BulkInsertState.ImportFailedAndCleaned):
            raise MilvusIndexError(f"bulk import of {file} failed: {state.failed_reason}")
        if time.monotonic() > deadline:
            raise MilvusIndexError(f"bulk import of {file} did not finish in {timeout_s:.0f} s ({state.state_name})")
        time.sleep(0.5)


def _meta_row(c: Chunk) -> dict[str, Any]:
    row = c.metadata()
    for key in ("uri", "path", "title", "section", "element_types"):
        row[key] = clip(str(row[key]), 2048)
    return row
