"""What ``search.enable()`` installs in place of milvus-lite 3.2.2's searches, and milvus-lite's own functions.

``search_with_index`` replaces ``milvus_lite.search.executor_indexed.execute_search_with_index`` (dense),
``search_sparse`` replaces ``milvus_lite.engine.collection.Collection._search_sparse`` (BM25) and
``bm25_search`` replaces ``SparseInvertedIndex.search`` (the BM25 scorer). The two searches are
upstream's logic (scope, scalar filters, FAISS and BM25 recall, merge, materialisation) restated in
smaller functions, with its two per-row validity loops replaced by ``masks.valid_masks``. Each falls
back to upstream's function (kept in ``UPSTREAM``) where the masks' assumptions do not hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from tasks.stores.milvus_lite import bm25 as milvus_lite_bm25
from tasks.stores.milvus_lite.masks import max_into, memtable_mask, unique_keys, valid_masks

UPSTREAM: dict[str, Any] = {}  # milvus-lite's own functions, filled by search.enable(): disable() and the fallbacks


def bm25_search(self: Any, query_sparse_vectors: list[dict[int, float]], top_k: int,
                valid_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``SparseInvertedIndex.search`` scored with numpy arrays (tasks/stores/milvus_lite/bm25.py), where exact."""
    if not milvus_lite_bm25.exact(query_sparse_vectors):
        return UPSTREAM["bm25"](self, query_sparse_vectors, top_k, valid_mask)
    return milvus_lite_bm25.search(self, query_sparse_vectors, top_k, valid_mask)


# --- dense: milvus_lite.search.executor_indexed.execute_search_with_index -------------------------
def search_with_index(query_vectors: np.ndarray, segments: Iterable[Any], memtable: Any, delta_index: Any,
                      top_k: int, metric_type: str, pk_field: str, vector_field: str,
                      partition_names: list[str] | None = None, compiled_filter: Any = None,
                      output_fields: list[str] | None = None, indexed_filter_plan: Any = None,
                      project_record_fn: Callable[[dict], dict] | None = None,
                      search_params: dict[str, Any] | None = None) -> list[list[dict]]:
    """Upstream's function with its two per-row loops replaced by ``valid_masks``; the rest as upstream."""
    segments = tuple(segments)
    if project_record_fn is None or not unique_keys(segments):  # Collection.search always projects
        return UPSTREAM["dense"](query_vectors, segments, memtable, delta_index, top_k, metric_type, pk_field,
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

    deletes = max_into(delta_index.snapshot, ((pk, e[0]) for pk, e in memtable.delete_index_snapshot().items()))
    later = max_into(dict(deletes), zip(mt_pks, mt_seqs.tolist(), strict=True))
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
        mask = memtable_mask(mt_pks, mt_seqs.tolist(), in_scope, deletes)
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
def search_sparse(self: Any, query_vectors: list, vector_field: str, top_k: int, metric_type: str,
                  partition_names: list[str] | None, expr: str | None, output_fields: list[str] | None,
                  timezone: str | None = None) -> list[list[dict]]:
    """Upstream's method with its per-row loops replaced by ``valid_masks``; the rest as upstream."""
    from milvus_lite.constants import ALL_PARTITIONS
    from milvus_lite.engine.projection import build_projection_plan, project_record
    from milvus_lite.index.sparse_factory import _search_prepared_sparse_index, create_sparse_index
    from milvus_lite.search.indexed_filter import evaluate_segment_filter

    segments, delta = self._read_snapshot()
    if not unique_keys(segments):
        return UPSTREAM["sparse"](self, query_vectors, vector_field, top_k, metric_type, partition_names, expr,
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
    later = max_into(dict(tombstones), ((pk, pos[2]) for pk, pos in self._memtable.pk_index_snapshot()))

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
        keep = memtable_mask([r[0] for r in records], [r[1] for r in records], segments, tombstones)
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
