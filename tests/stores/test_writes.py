"""Chunk writes on a real Milvus Lite: a rewritten document loses the chunks beyond its new count (one delete call
per 50 documents), and documents the caller says are new cost no delete at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.stores import milvus
from tasks.types import Chunk, IndexMeta

DIM = 8


def _chunks(docs: range, count: int) -> list[Chunk]:
    return [Chunk(f"doc{d}", i, f"text {d} {i}", f"file:///doc{d}.md") for d in docs for i in range(count)]


def _vectors(n: int) -> np.ndarray:
    v = np.random.default_rng(n).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_rewrites_trim_and_new_documents_skip_the_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with milvus.IndexClient(str(tmp_path / "w.db")) as index:
        name = index.ensure_generation("docs", IndexMeta("test-encoder", DIM, {"test": True}))
        deletes: list[str] = []
        real = index._c.delete
        monkeypatch.setattr(index._c, "delete", lambda c, **kw: deletes.append(kw["filter"]) or real(c, **kw))
        first = _chunks(range(60), 4)
        index.upsert_chunks(name, first, _vectors(len(first)), new_documents={f"doc{d}" for d in range(60)})
        assert deletes == []
        rewrite = _chunks(range(55), 2)  # 55 documents now have 2 chunks: 2 deletes (50 + 5 documents)
        index.upsert_chunks(name, rewrite, _vectors(len(rewrite)))
        index.flush(name)
        assert len(deletes) == 2
        assert index.count(name) == 55 * 2 + 5 * 4
        rows = {r["id"] for batch in index.iter_rows(name, fields=["id"]) for r in batch}
        assert {c.id for c in rewrite} | {c.id for c in first if c.doc_id in {f"doc{d}" for d in range(55, 60)}} == rows
