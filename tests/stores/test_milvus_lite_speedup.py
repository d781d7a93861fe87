"""tasks/stores/milvus_lite/search.py returns exactly what upstream Milvus Lite returns, on a real Milvus Lite.

Each check runs the same searches (dense, BM25, hybrid; scalar filters; partitions; several queries)
with the patch off and on, and asserts identical ids, distances and entities, at every state the
masks must get right: several segments, the same key upserted across flushes, memtable versions of
flushed keys, deletes in the memtable and flushed as tombstones, a key moved to another partition,
a delete followed by a re-insert, and a compaction.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymilvus import AnnSearchRequest, DataType, Function, FunctionType, MilvusClient, RRFRanker

from tasks.stores import milvus
from tasks.stores.milvus_lite import replacements
from tasks.stores.milvus_lite import search as milvus_lite_speedup
from tasks.types import Chunk, IndexMeta

DIM = 8
WORDS = [f"w{i}" for i in range(40)]
NAME = "diff"
# common (w0: Zipf's most frequent), rare (w39), absent (zz), a repeated word (query weight 2), mixes
BM25_QUERIES = ["w1 w7", "w3", "w12 w0 w30", "w0", "w39", "zz", "w0 w0 w5", "zz w38 w2"]


@pytest.fixture
def lite(tmp_path: Path) -> Any:
    path = str(tmp_path / "lite.db")
    client = MilvusClient(path)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=16)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("text", DataType.VARCHAR, max_length=512, enable_analyzer=True)
    schema.add_field("tag", DataType.VARCHAR, max_length=8)
    schema.add_field("n", DataType.INT64)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                 output_field_names=["sparse"]))
    index = client.prepare_index_params()
    index.add_index("vector", index_type="AUTOINDEX", metric_type="COSINE")
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(NAME, schema=schema, index_params=index)
    for partition in ("a", "b"):
        client.create_partition(NAME, partition)
    yield client, path
    client.close()
    milvus_lite_speedup.enable()


def test_patched_searches_equal_upstream_through_upserts_deletes_and_compaction(lite: Any) -> None:
    client, path = lite
    rng = np.random.default_rng(3)
    rows = _rows(rng, range(0, 150), "x")
    client.insert(NAME, rows[:100], partition_name="a")
    client.insert(NAME, rows[100:], partition_name="b")
    _flush(client, path)
    client.insert(NAME, _rows(rng, range(150, 300), "y"), partition_name="a")
    _flush(client, path)
    _check(client, rng, deleted=set())

    client.upsert(NAME, (again := _rows(rng, range(0, 40), "y")), partition_name="a")  # same keys, next segment
    _flush(client, path)
    _check(client, rng, deleted=set(), newest=again)

    client.upsert(NAME, (fresh := _rows(rng, range(40, 60), "x")), partition_name="a")  # memtable versions
    client.insert(NAME, _rows(rng, range(300, 310), "x"), partition_name="b")  # memtable-only keys
    deleted = {_pk(i) for i in (*range(100, 115), *range(40, 45), 301)}  # flushed, memtable-shadowed, memtable-only
    client.delete(NAME, ids=sorted(deleted))
    _check(client, rng, deleted=deleted, newest=fresh[5:])

    _flush(client, path)  # the memtable deletes become tombstones
    _check(client, rng, deleted=deleted, newest=fresh[5:])

    client.upsert(NAME, _rows(rng, [120], "x"), partition_name="a")  # a key moved from partition b to a
    client.delete(NAME, filter="n < 5")
    client.insert(NAME, (back := _rows(rng, [2], "y")), partition_name="b")  # deleted, then inserted again
    _check(client, rng, deleted=deleted | {_pk(i) for i in (0, 1, 3, 4)}, newest=back)

    _flush(client, path)  # a fourth data file in partition a: the background compaction merges them
    _check(client, rng, deleted=deleted | {_pk(i) for i in (0, 1, 3, 4)}, newest=back)


def test_numpy_bm25_scorer_equals_upstream_bit_for_bit() -> None:
    """The scorer alone, on indexes with Zipf terms, varied lengths and weights, masks and many ties."""
    from milvus_lite.index.sparse_inverted import SparseInvertedIndex

    assert milvus_lite_speedup.enable() and SparseInvertedIndex.search is replacements.bm25_search
    upstream = replacements.UPSTREAM["bm25"]
    rng = np.random.default_rng(11)
    for n, build_mask in ((500, False), (2000, True), (300, True)):
        docs = [_bm25_doc(rng) for _ in range(n)]
        index = SparseInvertedIndex(k1=1.2, b=0.6) if build_mask else SparseInvertedIndex()
        index.build(docs, valid_mask=rng.random(n) > 0.2 if build_mask else None)
        queries = [{0: 1.0}, {30: 1.0}, {999: 1.0}, {}, {0: 1.0, 1: 2.0, 999: 1.0, 7: 1.0}, _bm25_doc(rng),
                   {3: 1.0, 2: 1.0, 1: 1.0}]
        for mask in (None, rng.random(n) > 0.5, np.zeros(n, dtype=bool)):
            for k in (0, 1, 10, n + 5):
                ours, theirs = index.search(queries, k, valid_mask=mask), upstream(index, queries, k, valid_mask=mask)
                np.testing.assert_array_equal(ours[0], theirs[0])
                np.testing.assert_array_equal(ours[1], theirs[1])  # bitwise: float32 steps as upstream's
    tied = SparseInvertedIndex()
    tied.build([{2: 1.0}, {1: 1.0}, {2: 1.0}, {1: 1.0}])  # equal scores: ties go to the term queried first
    assert tied.search([{1: 1.0, 2: 1.0}], 4)[0].tolist() == [[1, 3, 0, 2]]


def _bm25_doc(rng: np.random.Generator) -> dict[int, float]:
    terms = np.minimum(rng.zipf(1.4, size=int(rng.integers(1, 30))), 60) - 1
    ids, counts = np.unique(terms, return_counts=True)
    return {int(ids[i]): float(counts[i]) for i in rng.permutation(len(ids))}  # dict order varies too


def test_ragtune_index_verbs_see_the_same_hits_patched_and_upstream(tmp_path: Path) -> None:
    """Re-ingestion as the flows do it: documents rewritten with fewer chunks, flushed and not, deleted."""
    rng, path = np.random.default_rng(5), str(tmp_path / "ragtune.db")
    with milvus.IndexClient(path) as index:
        name = index.ensure_generation("docs", IndexMeta("test-encoder", DIM, {"test": True}))
        _write(index, name, rng, range(30), chunks=4)
        index.flush(name)
        _settle(path, name)
        _compare(index, name, rng)
        _write(index, name, rng, range(0, 10), chunks=2)  # upsert + delete of the chunks beyond the new count
        index.flush(name)
        _settle(path, name)
        _compare(index, name, rng)
        _write(index, name, rng, range(10, 15), chunks=3)
        deleted = frozenset({"doc1", "doc12", "doc20"})  # rewritten and flushed, rewritten unflushed, flushed
        index.delete_documents(name, sorted(deleted))
        _compare(index, name, rng, deleted)
        index.flush(name)
        _settle(path, name)
        _compare(index, name, rng, deleted)


def test_another_milvus_lite_version_keeps_upstream_search(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    assert milvus_lite_speedup.enable()  # milvus-lite's own functions are recorded on the first install
    milvus_lite_speedup.disable()
    monkeypatch.setattr(milvus_lite_speedup, "_refused", [])
    monkeypatch.setattr(milvus_lite_speedup.metadata, "version", lambda name: "3.3.0")
    with caplog.at_level(logging.WARNING):
        assert not milvus_lite_speedup.enable()
        assert not milvus_lite_speedup.enable()
    assert not milvus_lite_speedup.active()
    assert _installed() == _upstream_functions()
    assert [r.getMessage() for r in caplog.records] == [
        "milvus-lite 3.3.0: search speedup off (written for 3.2.2); searches walk every row in Python"]
    monkeypatch.undo()
    assert milvus_lite_speedup.enable() and milvus_lite_speedup.active()
    assert _installed() == (replacements.search_with_index, replacements.search_sparse, replacements.bm25_search)


def test_bm25_scorer_keeps_upstream_where_its_arithmetic_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    """NumPy 1 or a NumPy-scalar query weight would round otherwise: upstream's scorer scores those queries."""
    from milvus_lite.index.sparse_inverted import SparseInvertedIndex

    from tasks.stores.milvus_lite import bm25 as milvus_lite_bm25

    assert milvus_lite_speedup.enable()
    index = SparseInvertedIndex()
    index.build([{1: 1.0}, {1: 2.0, 2: 1.0}, {2: 3.0}])
    upstream = replacements.UPSTREAM["bm25"]
    calls: list[Any] = []
    monkeypatch.setitem(replacements.UPSTREAM, "bm25", _recording(calls, upstream))
    index.search([{1: 1.0}], 2)
    assert not calls  # NumPy 2 and Python-float weights: the numpy scorer
    index.search([{1: np.float64(1.0)}], 2)
    monkeypatch.setattr(milvus_lite_bm25, "NUMPY_2", False)
    index.search([{1: 1.0}], 2)
    assert len(calls) == 2


def test_a_segment_with_a_repeated_key_falls_back_to_upstream_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """The masks assume each segment holds a key once; a segment that does not is left to upstream's code."""
    from types import SimpleNamespace

    assert milvus_lite_speedup.enable()
    calls: list[Any] = []
    monkeypatch.setitem(replacements.UPSTREAM, "dense", _recording(calls, lambda *args: [["upstream"]]))
    repeated = SimpleNamespace(pk_to_row={"a": 1}, num_rows=2, partition="_default")
    out = replacements.search_with_index(np.zeros((1, DIM), dtype=np.float32), [repeated], None, None, 1, "COSINE",
                                         "id", "vector", project_record_fn=dict)
    assert out == [["upstream"]] and calls[0][1] == (repeated,)


def _recording(calls: list[Any], then: Any) -> Any:
    def record(*args: Any) -> Any:
        calls.append(args)
        return then(*args)
    return record


def _installed() -> tuple[Any, Any, Any]:
    from milvus_lite.engine import collection
    from milvus_lite.index.sparse_inverted import SparseInvertedIndex

    return collection.execute_search_with_index, collection.Collection._search_sparse, SparseInvertedIndex.search


def _upstream_functions() -> tuple[Any, Any, Any]:
    return replacements.UPSTREAM["dense"], replacements.UPSTREAM["sparse"], replacements.UPSTREAM["bm25"]


# --- helpers --------------------------------------------------------------------------------------
def _write(index: milvus.IndexClient, name: str, rng: np.random.Generator, docs: range, chunks: int) -> None:
    batch = [Chunk(f"doc{d}", i, " ".join(rng.choice(WORDS, size=6, p=_zipf(len(WORDS)))), f"doc{d}.md")
             for d in docs for i in range(chunks)]
    index.upsert_chunks(name, batch, np.stack([_unit(rng) for _ in batch]))


def _compare(index: milvus.IndexClient, name: str, rng: np.random.Generator, deleted: frozenset[str] = frozenset(),
             ) -> None:
    vector, text, flt = _unit(rng).tolist(), "w1 w4 w9", 'doc_id in ["doc0", "doc1", "doc12", "doc13", "doc20"]'

    def searches() -> list[Any]:
        return [index.search_dense(name, vector, 20), index.search_dense(name, vector, 5, flt),
                index.search_bm25(name, text, 20), index.search_bm25(name, text, 5, flt),
                index.search_hybrid(name, text, vector, 10, 30),
                index.search_hybrid(name, text, vector, 5, 30, 60, flt)]

    milvus_lite_speedup.disable()
    upstream = searches()
    assert milvus_lite_speedup.enable()
    patched = searches()
    assert patched == upstream and all(patched)
    assert not {h.doc_id for hits in patched for h in hits} & deleted


def _pk(i: int) -> str:
    return f"r{i:04d}"


def _rows(rng: np.random.Generator, ids: Any, tag: str) -> list[dict[str, Any]]:
    out = []
    for i in ids:
        words = rng.choice(WORDS, size=6, p=_zipf(len(WORDS)))
        out.append({"id": _pk(i), "vector": _unit(rng).tolist(), "text": " ".join(words), "tag": tag, "n": int(i)})
    return out


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _flush(client: MilvusClient, path: str) -> None:
    client.flush(NAME)
    _settle(path, NAME)


def _settle(path: str, name: str) -> None:
    """Wait for Milvus Lite's background compaction and index builds: both change what a search sees
    (HNSW instead of brute force, per-segment BM25 statistics), so both sides of a comparison must see
    the same (private API: this test is about milvus-lite's internals anyway)."""
    from milvus_lite.server_manager import server_manager_instance

    _server, db, _port = server_manager_instance._servers[os.path.abspath(path)]
    db.get_collection(name)._wait_for_bg(timeout=60)


def _searches(client: MilvusClient, queries: list[list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = ["id", "tag", "n", "text"]
    cases: dict[str, dict[str, Any]] = {
        "dense": {}, "dense k=60": {"limit": 60}, "dense tag": {"filter": 'tag == "x"'},
        "dense n": {"filter": "n >= 40 and n < 130"}, "dense a": {"partition_names": ["a"]},
        "dense b": {"partition_names": ["b"]}, "dense a+b": {"partition_names": ["a", "b"]},
    }
    for label, extra in cases.items():
        args = {"limit": 10, **extra}
        out[label] = client.search(NAME, queries, anns_field="vector", output_fields=fields,
                                   search_params={"metric_type": "COSINE"}, **args)
        out[label.replace("dense", "bm25")] = client.search(NAME, BM25_QUERIES, anns_field="sparse",
                                                            output_fields=fields, search_params={"metric_type": "BM25"},
                                                            **args)
    dense = AnnSearchRequest(queries[:1], "vector", {"metric_type": "COSINE"}, 30)
    sparse = AnnSearchRequest(["w2 w9"], "sparse", {"metric_type": "BM25"}, 30)
    out["hybrid"] = client.hybrid_search(NAME, [dense, sparse], RRFRanker(60), limit=10, output_fields=fields)
    dense = AnnSearchRequest(queries[:1], "vector", {"metric_type": "COSINE"}, 30, expr='tag == "x"')
    sparse = AnnSearchRequest(["w0 w39 zz"], "sparse", {"metric_type": "BM25"}, 30, expr='tag == "x"')
    out["hybrid tag"] = client.hybrid_search(NAME, [dense, sparse], RRFRanker(60), limit=10, output_fields=fields)
    return {label: [[(h["id"], h["distance"], sorted(h["entity"].items())) for h in hits] for hits in res]
            for label, res in out.items()}


def _check(client: MilvusClient, rng: np.random.Generator, deleted: set[str],
           newest: list[dict[str, Any]] | None = None) -> None:
    """Patch off, patch on: identical results; and they are the right ones (no deleted key, newest versions)."""
    newest = newest or []
    queries = [_unit(rng).tolist() for _ in range(3)] + [r["vector"] for r in newest[:3]]
    milvus_lite_speedup.disable()
    upstream = _searches(client, queries)
    assert milvus_lite_speedup.enable()
    patched = _searches(client, queries)
    assert patched == upstream
    found = {hit[0] for res in patched.values() for hits in res for hit in hits}
    assert found and not found & deleted
    for row, hits in zip(newest[:3], patched["dense"][3:], strict=False):
        assert hits[0][0] == row["id"] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert dict(hits[0][2])["text"] == row["text"]


def test_the_setting_turns_the_patch_off_and_on_at_process_start(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.runtime.process import process_settings
    from tasks.settings import get_settings

    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        monkeypatch.setenv("RAGTUNE_MILVUS__LITE_FAST_SEARCH", "false")
        get_settings.cache_clear()
        with milvus.connect(process_settings()):  # opening Milvus Lite does not switch it back on
            assert _installed() == _upstream_functions() and not milvus_lite_speedup.active()
        monkeypatch.delenv("RAGTUNE_MILVUS__LITE_FAST_SEARCH")
        get_settings.cache_clear()
        with milvus.connect(process_settings()):
            assert _installed() == (replacements.search_with_index, replacements.search_sparse,
                                    replacements.bm25_search)
    finally:
        get_settings.cache_clear()
        milvus_lite_speedup.enable()
