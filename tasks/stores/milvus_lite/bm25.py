"""Milvus Lite's BM25 scorer in numpy: ``SparseInvertedIndex.search`` without a Python step per posting.

Why: milvus-lite 3.2.2 scores BM25 by walking each query term's posting list in Python (one dict update
per posting, then a full ``sorted``), so a question's latency grows with how many chunks hold its words
(timings: docs/retrieval.md). Installed by ``tasks.stores.milvus_lite.search.enable()`` (as
``replacements.bm25_search``) under the same version guard and switch.

Same results, not just close ones. Upstream's formula, ``idf * tf*(k1+1) / (tf + k1*(1-b+b*dl/avgdl)) *
weight`` summed per document, runs in float32 under NumPy 2: ``dl`` is an ``np.float32`` and a Python
float meeting one is cast to float32 (NEP 50), so every step after ``b * dl`` rounds to float32, except
``tf * (k1+1)``, two Python floats, which rounds once when it meets the float32 denominator. The
arrays below repeat each step in that precision and order, and accumulate a document's terms in float32
in query-term order, so scores are bitwise upstream's. Ties too: upstream's stable ``sorted`` keeps
equal scores in the order documents entered its dict (first posting seen, term by term); the
candidates here are listed in that order and sorted stably. On NumPy 1 (value-based casting: upstream
then runs in float64) the scorer stays upstream's.

Per term, the posting list becomes two arrays (local ids, and ``idf * tf_norm``, which depend on the
index alone), built on its first query and cached on the index: an index is built once and never
changed (a segment's scorer is rebuilt as a new object when its segment changes; the memtable's is
built for each search); the cache is keyed on the posting dict object, so a second ``build`` on the
same object starts a new cache.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

CACHE = "_ragtune_bm25_terms"
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def search(index: Any, query_sparse_vectors: list[dict[int, float]], top_k: int,
           valid_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``SparseInvertedIndex.search``: (local ids, -score) per query, shape (nq, top_k), -1/inf padded."""
    from milvus_lite.index.sparse_common import empty_results, validate_mask

    valid_mask = validate_mask(valid_mask, len(index._doc_lengths))
    all_ids, all_dists = empty_results(len(query_sparse_vectors), top_k)
    if index.doc_count == 0:
        return all_ids, all_dists
    for qi, terms in enumerate(query_sparse_vectors):
        if not terms:
            continue
        ids, scores = _scores(index, terms, valid_mask)
        if len(ids):
            order = top_order(scores, top_k)
            all_ids[qi, :len(order)] = ids[order]
            all_dists[qi, :len(order)] = -scores[order]
    return all_ids, all_dists


def exact(query_sparse_vectors: list[dict[int, float]]) -> bool:
    """Whether the arrays reproduce upstream's arithmetic for these queries (else upstream scores them):
    NumPy 2, and Python-number query weights (``compute_tf``'s floats; an ``np.float64`` would make
    upstream's sum float64)."""
    return NUMPY_2 and all(type(w) in (float, int) for q in query_sparse_vectors for w in q.values())


def _scores(index: Any, terms: dict[int, float], valid_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Scored local ids in upstream's insertion order (first posting seen), and their float32 scores."""
    parts = []
    for term, weight in terms.items():
        posting = term_arrays(index, term)
        if posting is None:
            continue
        ids, idf_tf = posting
        if valid_mask is not None:
            keep = valid_mask[ids]
            ids, idf_tf = ids[keep], idf_tf[keep]
        parts.append((ids, idf_tf * weight))  # float32 * Python number: float32, as upstream's scalar step
    if len(parts) <= 1:
        return parts[0] if parts else (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
    n = len(index._doc_lengths)
    total, seen, order = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool), []
    for ids, contrib in parts:
        order.append(ids[~seen[ids]])
        seen[ids] = True
        total[ids] += contrib  # a term lists a document once: no repeated index in the fancy add
    ids = np.concatenate(order)
    return ids, total[ids]


def top_order(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Positions of the ``top_k`` largest scores, largest first, equal scores in their given order."""
    if top_k <= 0:
        return np.empty(0, dtype=np.int64)
    if len(scores) > top_k:
        kth = scores[np.argpartition(-scores, top_k - 1)[top_k - 1]]
        pool = np.flatnonzero(scores >= kth)  # every tie of the k-th, kept in order
    else:
        pool = np.arange(len(scores))
    return pool[np.argsort(-scores[pool], kind="stable")][:top_k]


def term_arrays(index: Any, term: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(local ids int64, ``idf * tf_norm`` float32) of ``term``'s posting list; None when it has none."""
    cache = index.__dict__.get(CACHE)
    if cache is None or cache[0] is not index._posting_lists:
        cache = (index._posting_lists, {})
        index.__dict__[CACHE] = cache
    terms: dict[int, tuple[np.ndarray, np.ndarray] | None] = cache[1]
    if term not in terms:
        terms[term] = _build(index, term)
    return terms[term]


def _build(index: Any, term: int) -> tuple[np.ndarray, np.ndarray] | None:
    posting = index._posting_lists.get(term)
    if not posting:
        return None
    pairs = np.fromiter(itertools.chain.from_iterable(posting), dtype=np.float64, count=2 * len(posting))
    ids, tf = pairs[0::2].astype(np.int64), pairs[1::2]
    n_docs, df, k1, b = index.doc_count, index._df[term], index.k1, index.b
    avgdl = index.avgdl if index.avgdl > 0 else 1.0
    idf = math.log((n_docs - df + 0.5) / (df + 0.5) + 1.0)
    dl = index._doc_lengths[ids]
    denominator = tf.astype(np.float32) + k1 * (1.0 - b + b * dl / avgdl)  # float32, step by step
    tf_norm = (tf * (k1 + 1.0)).astype(np.float32) / denominator  # the Python-float numerator, rounded once
    return ids, idf * tf_norm
