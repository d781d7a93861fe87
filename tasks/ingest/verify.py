"""`ragtune index verify`: check the record against the chunks Milvus holds, and repair.

Checks: every indexed document has exactly ``chunk_count`` chunks with ids 0..n-1 (sampled ids
looked up by primary key), and no chunk belongs to a document the record does not list as
indexed (an orphan). Repair deletes orphans and marks mismatched documents ``pending`` so the
next ingestion run re-indexes them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

from tasks.stores.milvus import IndexClient
from tasks.types import chunk_id


def verify_index(index: IndexClient, alias: str, repair: bool = False, sample: int = 200) -> dict[str, Any]:
    records = index.read_records(alias)
    counts = Counter(r["doc_id"] for batch in index.iter_rows(alias, 4000, fields=["doc_id"]) for r in batch)
    indexed = {d: r for d, r in records.items() if r.status == "indexed"}
    orphans = sorted(d for d in counts if d not in indexed)
    wrong = sorted(d for d, r in indexed.items() if counts.get(d, 0) != r.chunk_count)
    missing_ids = _sampled_missing(index, alias, [r for d, r in indexed.items() if d not in wrong], sample)
    wrong = sorted({*wrong, *missing_ids})
    if repair and (orphans or wrong):
        index.delete_documents(alias, orphans)
        index.flush(alias)
        index.write_records(alias, [replace(indexed[d], status="pending", version="") for d in wrong])
        index.flush_records(alias)
    return {"collection": index.resolve(alias), "documents": len(indexed), "chunks": sum(counts.values()),
            "orphan_documents": len(orphans), "orphan_chunks": sum(counts[d] for d in orphans),
            "mismatched_documents": [indexed[d].uri for d in wrong], "repaired": repair and bool(orphans or wrong),
            "ok": not orphans and not wrong}


def _sampled_missing(index: IndexClient, alias: str, records: list[Any], sample: int) -> set[str]:
    """Documents among a random sample whose expected chunk ids are not all present."""
    chosen = random.Random(0).sample(records, min(sample, len(records)))
    present = index.chunk_ids(alias, [r.doc_id for r in chosen])
    return {r.doc_id for r in chosen
            if set(present.get(r.doc_id, [])) != {chunk_id(r.doc_id, i) for i in range(r.chunk_count)}}
