"""Milvus Lite searches without a Python pass over every row: validity masks from set intersections.

Why: milvus-lite 3.2.2 is a pure-Python engine. Before FAISS (dense) or its BM25 scorer (sparse) runs,
every search walks every row of every segment in Python, twice, to keep only the rows that are the
newest version of their primary key and not deleted (``execute_search_with_index``'s
``_update_max_seqs`` and ``_build_local_mask``, the same loops inline in ``Collection._search_sparse``):
~0.65 us a row, 65 ms of an 80 ms search at 100k rows (docs/retrieval.md).

The rule those loops apply is "a row is valid unless its primary key has a later event": a version in
another segment or in the memtable, a flushed tombstone (``DeltaIndex``) or a memtable delete, each
with a larger sequence number. Segments are immutable and hold each key once, so only the rows whose
key has such an event can be invalid; this module finds them with dict-key intersections (C loops over
the smaller side) and clears them in an all-true mask. The rest of both searches (scope, scalar
filters, FAISS and BM25 recall, merge, materialisation) is upstream's logic, restated below in
smaller functions. ``tests/stores/test_milvus_lite_speedup.py`` runs the same searches with the patch on and
off against real Milvus Lite (upserts across flushes, deletes before and after flush, memtable rows,
partitions, filters) and asserts identical results. The BM25 scorer itself
(``SparseInvertedIndex.search``, a Python step per posting) is replaced too, by the numpy one in
``tasks/stores/milvus_lite/bm25.py``, under the same guard and switch.

Guard: active only on the milvus-lite versions in ``SUPPORTED`` (pinned in constraints.txt; the three
functions were read and rewritten against them); any other version keeps upstream's code and logs once
why. A segment with a repeated key (3.2.2's flush and compaction never write one) falls back to
upstream's search.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from tasks.stores.milvus_lite import bm25 as milvus_lite_bm25

log = logging.getLogger(__name__)
SUPPORTED = ("3.2.2",)
_upstream: dict[str, Any] = {}  # milvus-lite's own functions, kept for disable() and the fallbacks
_active = False
_refused: list[str] = []
_patch_lock = threading.Lock()
# Segments are immutable (a flush or compaction makes new Segment objects), so the versions of the keys
# they share are a function of the segment set: computed once per set (~7 ms at 100k rows), reused.
# Kept per collection, under its memtable (the per-collection object both searches see; a flush replaces
# it, and then the segments change too): an entry holds its segments alive only while its collection
# lives and until its next search sees other segments.
_shared_cache: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], tuple[tuple[Any, ...], dict[Any, int]]]] = (
    weakref.WeakKeyDictionary())
_cache_lock = threading.Lock()


def enable() -> bool:
    """Install the faster searches (idempotent); False, logged once, on a milvus-lite it was not written for."""
    with _patch_lock:
        return _install()


def _install() -> bool:
    global _active
    if _active:
        return True
    try:
        version = metadata.version("milvus-lite")
    except metadata.PackageNotFoundError:
        version = "not installed"
    if version not in SUPPORTED:
        if not _refused:
            _refused.append(version)
            log.warning("milvus-lite %s: search speedup off (written for %s); searches walk every row in Python",
                        version, ", ".join(SUPPORTED))
        return False
    from milvus_lite.engine import collection
    from milvus_lite.index.sparse_inverted import SparseInvertedIndex

    _upstream.setdefault("dense", collection.execute_search_with_index)
    _upstream.setdefault("sparse", collection.Collection._search_sparse)
    _upstream.setdefault("bm25", SparseInvertedIndex.search)
    collection.execute_search_with_index = _search_with_index
    collection.Collection._search_sparse = _search_sparse
    SparseInvertedIndex.search = _bm25_search
    _active = True
    return True


def disable() -> None:
    """Restore upstream's searches (the differential test and the bench compare both)."""
    global _active
    with _patch_lock:
        if _active:
            from milvus_lite.engine import collection
            from milvus_lite.index.sparse_inverted import SparseInvertedIndex

            collection.execute_search_with_index = _upstream["dense"]
            collection.Collection._search_sparse = _upstream["sparse"]
            SparseInvertedIndex.search = _upstream["bm25"]
            _active = False


def active() -> bool:
    return _active


def _bm25_search(self: Any, query_sparse_vectors: list[dict[int, float]], top_k: int,
                 valid_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``SparseInvertedIndex.search`` scored with numpy arrays (tasks/stores/milvus_lite/bm25.py), where exact."""
    if not milvus_lite_bm25.exact(query_sparse_vectors):
        return _upstream["bm25"](self, query_sparse_vectors, top_k, valid_mask)
    return milvus_lite_bm25.search(self, query_sparse_vectors, top_k, valid_mask)


# --- the masks ------------------------------------------------------------------------------------
def valid_masks(segments: Sequence[Any], versions_over: Sequence[Any], later: dict[Any, int], owner: Any,
                later_for: Callable[[Any], dict[Any, int]] | None = None) -> list[np.ndarray]:
    """Per segment: True where the row is the newest version of its key and no later event shadows it.

    ``versions_over``: the segments whose versions compete (upstream: in-scope ones for dense, all for
    sparse); ``later``: key -> sequence of its latest memtable version or delete; ``later_for(segment)``:
    extra events that apply to that segment only (sparse: partition-scoped memtable deletes); ``owner``:
    the collection's memtable, under which the shared-key versions are cached.
    """
    shadow = _max_into(dict(later), _shared_versions(versions_over, owner).items())
    if later_for is None:
        return [_mask(seg, shadow) for seg in segments]
    return [_mask(seg, _max_into(dict(shadow), later_for(seg).items())) for seg in segments]


def _shared_versions(segments: Sequence[Any], owner: Any) -> dict[Any, int]:
    """Key -> newest sequence, for the keys found in more than one segment (cached under ``owner``)."""
    segments = tuple(s for s in segments if s.num_rows)
    if len(segments) < 2:
        return {}
    key = tuple(id(s) for s in segments)  # the entry holds the segments: their ids cannot be reused meanwhile
    with _cache_lock:
        cached = _shared_cache.get(owner, {}).get(key)
    if cached is not None:
        return cached[1]
    seen: set[Any] = set()
    shared: set[Any] = set()
    for seg in segments:
        keys = seg.pk_to_row.keys()
        shared |= keys & seen
        seen.update(keys)
    versions = {pk: _newest(pk, segments) for pk in shared}
    with _cache_lock:
        entries = _shared_cache.setdefault(owner, {})
        if len(entries) >= 2:  # dense and BM25 searches of one partition scope; more scopes take turns
            entries.clear()
        entries[key] = (segments, versions)
    return versions


def _newest(pk: Any, segments: Sequence[Any]) -> int:
    """The largest sequence of ``pk`` among ``segments`` (-1 when none holds it)."""
    return max((int(s.seqs[r]) for s in segments if (r := s.pk_to_row.get(pk)) is not None), default=-1)


def _mask(seg: Any, shadow: dict[Any, int]) -> np.ndarray:
    mask = np.ones(seg.num_rows, dtype=bool)
    hits = seg.pk_to_row.keys() & shadow.keys()
    if hits:
        rows = np.fromiter((seg.pk_to_row[pk] for pk in hits), dtype=np.int64, count=len(hits))
        later = np.fromiter((shadow[pk] for pk in hits), dtype=np.int64, count=len(hits))
        mask[rows[later > seg.seqs[rows].astype(np.int64)]] = False
    return mask


def _max_into(target: dict[Any, int], items: Iterable[tuple[Any, int]]) -> dict[Any, int]:
    """``target`` with each key's sequence raised to the largest seen in ``items``."""
    for pk, seq in items:
        if seq > target.get(pk, -1):
            target[pk] = seq
    return target


def _unique_keys(segments: Iterable[Any]) -> bool:
    return all(len(s.pk_to_row) == s.num_rows for s in segments)


def _memtable_mask(pks: Sequence[Any], seqs: Sequence[int], segments: Sequence[Any],
                   later: dict[Any, int]) -> np.ndarray:
    """Memtable rows (few: flushes empty it): valid unless a segment or ``later`` holds a larger sequence."""
    out = np.ones(len(pks), dtype=bool)
    for j, (pk, seq) in enumerate(zip(pks, seqs, strict=True)):
        out[j] = max(_newest(pk, segments), later.get(pk, -1)) <= int(seq)
    return out


# --- dense: milvus_lite.search.executor_indexed.execute_search_with_index -------------------------
def _search_with_index(query_vectors: np.ndarray, segments: Iterable[Any], memtable: Any, delta_index: Any,
                       top_k: int, metric_type: str, pk_field: str, vector_field: str,
                       partition_names: list[str] | None = None, compiled_filter: Any = None,
                       output_fields: list[str] | None = None, indexed_filter_plan: Any = None,
                       project_record_fn: Callable[[dict], dict] | None = None,
                       search_params: dict[str, Any] | None = None) -> list[list[dict]]:
    """Upstream's function with its two per-row loops replaced by ``valid_masks``; the rest as upstream."""
    segments = tuple(segments)
    if project_record_fn is None or not _unique_keys(segments):  # Collection.search always projects
        return _upstream["dense"](query_vectors, segments, memtable, delta_index, top_k, metric_type, pk_field,
                                  vector_field, partition_names, compiled_filter, output_fields,
                                  indexed_filter_plan, project_record_fn, search_params)
    if query_vectors.ndim == 1:
        query_vectors = query_vectors.reshape(1, -1)
    query_vectors = query_vectors.astype(np.float32, copy=False)
    nq = int(query_vectors.shape[0])
    if nq == 0 or top_k <= 0:
        return [[] for _ in range(nq)]
    scope = set(partition_names) if partition_names else None
    in_scope = [s for s in segments if s.num_rows > 0 and (scope is None or s.partition in scope)]
    mt_pks, mt_seqs, mt_vecs, mt_refs, mt_table = memtable.to_search_snapshot(
        vector_field=vector_field, partition_names=partition_names, include_table=compiled_filter is not None)
    if not in_scope and not mt_pks:
        return [[] for _ in range(nq)]

    deletes = _max_into(delta_index.snapshot, ((pk, e[0]) for pk, e in memtable.delete_index_snapshot().items()))
    later = _max_into(dict(deletes), zip(mt_pks, mt_seqs.tolist(), strict=True))
    masks = valid_masks(in_scope, in_scope, later, memtable)
    candidates: list[list[tuple[float, int, int]]] = [[] for _ in range(nq)]
    for i, seg in enumerate(in_scope):
        vectors, null_mask = seg.vector_data(vector_field)
        mask = masks[i] if null_mask is None else masks[i] & null_mask
        if compiled_filter is not None:
            from milvus_lite.search.indexed_filter import evaluate_segment_filter

            mask = mask & evaluate_segment_filter(seg, compiled_filter, indexed_filter_plan).astype(bool)
        _recall(query_vectors, top_k, metric_type, search_params, i, vectors, mask, seg.indexes.get(vector_field),
                candidates)
    if mt_pks:
        mask = _memtable_mask(mt_pks, mt_seqs.tolist(), in_scope, deletes)
        if compiled_filter is not None and mt_table is not None:
            from milvus_lite.search.filter import evaluate_mask

            mask = mask & evaluate_mask(compiled_filter, mt_table).astype(bool)
        _recall(query_vectors, top_k, metric_type, search_params, len(in_scope), mt_vecs, mask, None, candidates)

    def record(source: int, local_id: int) -> dict:
        if source < len(in_scope):
            return in_scope[source].row_to_dict(local_id)
        return memtable.materialize_row(*mt_refs[local_id])

    def pk_of(source: int, local_id: int) -> Any:
        return in_scope[source].pks[local_id] if source < len(in_scope) else mt_pks[local_id]

    results = []
    for per_query in candidates:
        per_query.sort()  # (distance, source, local id): upstream's tie order
        hits = []
        for dist, source, local_id in per_query[:top_k]:
            rec = record(source, local_id)
            hits.append({"id": rec[pk_field] if pk_field in rec else pk_of(source, local_id), "distance": dist,
                         "entity": project_record_fn(rec)})
        results.append(hits)
    return results


def _recall(query_vectors: np.ndarray, top_k: int, metric_type: str, search_params: dict[str, Any] | None,
            source: int, vectors: np.ndarray, mask: np.ndarray, index: Any,
            candidates: list[list[tuple[float, int, int]]]) -> None:
    """One source's top-k into ``candidates`` (upstream's ``_recall_source`` after its mask)."""
    if not len(mask) or not mask.any():
        return
    if index is None:
        from milvus_lite.index.brute_force import BruteForceIndex

        index = BruteForceIndex.build(vectors, metric_type)
    ids, dists = index.search(query_vectors, top_k, valid_mask=None if mask.all() else mask, params=search_params)
    _collect(ids, dists, top_k, candidates, lambda lid: (source, lid))


# --- sparse: milvus_lite.engine.collection.Collection._search_sparse ------------------------------
def _search_sparse(self: Any, query_vectors: list, vector_field: str, top_k: int, metric_type: str,
                   partition_names: list[str] | None, expr: str | None, output_fields: list[str] | None,
                   timezone: str | None = None) -> list[list[dict]]:
    """Upstream's method with its per-row loops replaced by ``valid_masks``; the rest as upstream."""
    from milvus_lite.constants import ALL_PARTITIONS
    from milvus_lite.engine.projection import build_projection_plan, project_record
    from milvus_lite.index.sparse_factory import _search_prepared_sparse_index, create_sparse_index
    from milvus_lite.search.indexed_filter import evaluate_segment_filter

    segments, delta = self._read_snapshot()
    if not _unique_keys(segments):
        return _upstream["sparse"](self, query_vectors, vector_field, top_k, metric_type, partition_names, expr,
                                   output_fields, timezone)
    scope = set(partition_names) if partition_names else None
    plan = build_projection_plan(output_fields, self._schema, api_kind="search")
    spec = self._index_specs.get(vector_field)
    params = spec.build_params if spec else {}
    queries = self._prepare_sparse_queries(query_vectors, vector_field)
    compiled_filter = self._compile_filter(expr, timezone=timezone) if expr else None
    filter_plan = self._indexed_filter_plan(compiled_filter)
    candidates: list[list[tuple[float, Any, Any]]] = [[] for _ in queries]
    pending = self._memtable.delete_index_snapshot()
    tombstones = delta.snapshot
    later = _max_into(dict(tombstones), ((pk, pos[2]) for pk, pos in self._memtable.pk_index_snapshot()))

    def pending_for(seg: Any) -> dict[Any, int]:  # upstream: a memtable delete reaches its own partition
        return {pk: seq for pk, (seq, part) in pending.items() if part in (ALL_PARTITIONS, seg.partition)}

    targets = [s for s in segments if (scope is None or s.partition in scope) and s.table is not None
               and len(s.table)]
    for seg, mask in zip(targets, valid_masks(targets, segments, later, self._memtable, pending_for), strict=True):
        index = _segment_sparse_index(seg, vector_field, metric_type, params)
        if compiled_filter is not None:
            mask = mask & evaluate_segment_filter(seg, compiled_filter, filter_plan)
        if mask.any():
            ids, dists = _search_prepared_sparse_index(index, queries, top_k, valid_mask=mask)
            _collect(ids, dists, top_k, candidates, _segment_ref(seg))

    records = self._memtable.active_record_snapshots(partition_names=partition_names)
    if records:
        keep = _memtable_mask([r[0] for r in records], [r[1] for r in records], segments, tombstones)
        records = [r for r, k in zip(records, keep, strict=True) if k]
    if records:
        _search_memtable_sparse(records, queries, vector_field, metric_type, params, compiled_filter, top_k,
                                candidates, create_sparse_index, _search_prepared_sparse_index)
    return [_merge_sparse(per_query, top_k, lambda rec: project_record(rec, self._schema, plan))
            for per_query in candidates]


def _segment_ref(seg: Any) -> Callable[[int], tuple[Any, Any]]:
    return lambda lid: (seg.pks[lid], (seg.table, lid))


def _segment_sparse_index(seg: Any, vector_field: str, metric_type: str, params: dict[str, Any]) -> Any:
    """The segment's cached scorer, built on first use (upstream's cache, shared with it)."""
    from milvus_lite.analyzer.sparse import bytes_to_sparse
    from milvus_lite.index.sparse_factory import create_sparse_index, sparse_index_matches

    index = seg.sparse_indexes.get(vector_field)
    if not sparse_index_matches(index, metric_type, params):
        rows = seg.table.column(vector_field).to_pylist()
        index = create_sparse_index(metric_type, params)
        index.build([bytes_to_sparse(r) if isinstance(r, bytes) else (r or {}) for r in rows])
        seg.sparse_indexes[vector_field] = index
    return index


def _search_memtable_sparse(records: list[tuple[Any, int, dict]], queries: list, vector_field: str,
                            metric_type: str, params: dict[str, Any], compiled_filter: Any, top_k: int,
                            candidates: list[list[tuple[float, Any, Any]]], create: Any, search: Any) -> None:
    from milvus_lite.analyzer.sparse import bytes_to_sparse
    from milvus_lite.search.filter.eval.python_backend import _eval_row

    vectors = [bytes_to_sparse(raw) if isinstance(raw := rec.get(vector_field), bytes) else (raw or {})
               for _pk, _seq, rec in records]
    valid = np.ones(len(records), dtype=bool)
    if compiled_filter is not None:
        valid = np.array([bool(_eval_row(compiled_filter.ast, rec)) for _pk, _seq, rec in records], dtype=bool)
    index = create(metric_type, params)
    index.build(vectors, valid_mask=valid)
    ids, dists = search(index, queries, top_k)
    _collect(ids, dists, top_k, candidates, lambda lid: (records[lid][0], (records[lid][2], records[lid][1])))


def _collect(ids: np.ndarray, dists: np.ndarray, top_k: int, candidates: list[list[tuple[float, Any, Any]]],
             source: Callable[[int], tuple[Any, Any]]) -> None:
    for q, per_query in enumerate(candidates):
        for j in range(top_k):
            lid = int(ids[q, j])
            if lid < 0:
                break
            pk, ref = source(lid)
            per_query.append((float(dists[q, j]), pk, ref))


def _merge_sparse(per_query: list[tuple[float, Any, Any]], top_k: int,
                  project: Callable[[dict], dict]) -> list[dict]:
    """Upstream's merge: one candidate per key (the newest), by distance, materialised."""
    best: dict[Any, tuple[int, tuple[float, Any, Any]]] = {}
    for cand in per_query:
        _dist, pk, ref = cand
        seq = int(ref[1]) if isinstance(ref[0], dict) else int(ref[0].column("_seq")[ref[1]].as_py())
        if pk not in best or seq > best[pk][0]:
            best[pk] = (seq, cand)
    deduped = sorted((c for _seq, c in best.values()), key=lambda c: c[0])
    hits = []
    for dist, pk, ref in deduped[:top_k]:
        if isinstance(ref[0], dict):
            record = ref[0]
        else:
            table, row = ref
            record = {name: table.column(name)[row].as_py() for name in table.column_names
                      if name not in ("_seq", "_partition")}
        hits.append({"id": pk, "distance": dist, "entity": project(record)})
    return hits
