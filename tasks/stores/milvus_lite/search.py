"""Milvus Lite searches without a Python pass over every row: the patch's guard and its on/off switch.

Why: milvus-lite 3.2.2 is a pure-Python engine. Before FAISS (dense) or its BM25 scorer (sparse) runs,
every search walks every row of every segment in Python, twice, to keep only the rows that are the
newest version of their primary key and not deleted (``execute_search_with_index``'s
``_update_max_seqs`` and ``_build_local_mask``, the same loops inline in ``Collection._search_sparse``):
most of a search's time at 100k rows, growing with the collection (docs/retrieval.md).

The patch (``enable``) installs ``replacements.search_with_index`` and ``replacements.search_sparse``,
upstream's two searches with those loops replaced by the set-intersection masks of ``masks``, and
``replacements.bm25_search``, the numpy BM25 scorer of ``bm25`` in place of
``SparseInvertedIndex.search`` (a Python step per posting). ``disable`` puts upstream's back. Where it is
switched: ``tasks.runtime.process.start_process``, from the setting ``milvus.lite_fast_search``
(``RAGTUNE_MILVUS__LITE_FAST_SEARCH``): Milvus Lite runs inside the process, so the switch is per process.
``tests/stores/test_milvus_lite_speedup.py`` runs the same searches with the patch on and off against
real Milvus Lite (upserts across flushes, deletes before and after flush, memtable rows, partitions,
filters) and asserts identical results.

Guard: active only on the milvus-lite versions in ``SUPPORTED`` (pinned in constraints.txt; the three
functions were read and rewritten against them); any other version keeps upstream's code and logs once
why. A segment with a repeated key (3.2.2's flush and compaction never write one) falls back to
upstream's search; NumPy 1 (other float rounding) keeps upstream's BM25 scorer.
"""

from __future__ import annotations

import logging
import threading
from importlib import metadata

from tasks.stores.milvus_lite import replacements

log = logging.getLogger(__name__)
SUPPORTED = ("3.2.2",)
_active = False
_refused: list[str] = []
_patch_lock = threading.Lock()


def enable() -> bool:
    """Install the faster searches (idempotent); False, logged once, on a milvus-lite it was not written for."""
    with _patch_lock:
        return _install()


def disable() -> None:
    """Restore upstream's searches (the differential test and the bench compare both)."""
    global _active
    with _patch_lock:
        if _active:
            from milvus_lite.engine import collection
            from milvus_lite.index.sparse_inverted import SparseInvertedIndex

            collection.execute_search_with_index = replacements.UPSTREAM["dense"]
            collection.Collection._search_sparse = replacements.UPSTREAM["sparse"]
            SparseInvertedIndex.search = replacements.UPSTREAM["bm25"]
            _active = False


def active() -> bool:
    return _active


def _install() -> bool:
    global _active
    if _active:
        return True
    version = _installed_version()
    if version not in SUPPORTED:
        if not _refused:
            _refused.append(version)
            log.warning("milvus-lite %s: search speedup off (written for %s); searches walk every row in Python",
                        version, ", ".join(SUPPORTED))
        return False
    from milvus_lite.engine import collection
    from milvus_lite.index.sparse_inverted import SparseInvertedIndex

    replacements.UPSTREAM.setdefault("dense", collection.execute_search_with_index)
    replacements.UPSTREAM.setdefault("sparse", collection.Collection._search_sparse)
    replacements.UPSTREAM.setdefault("bm25", SparseInvertedIndex.search)
    collection.execute_search_with_index = replacements.search_with_index
    collection.Collection._search_sparse = replacements.search_sparse
    SparseInvertedIndex.search = replacements.bm25_search
    _active = True
    return True


def _installed_version() -> str:
    try:
        return metadata.version("milvus-lite")
    except metadata.PackageNotFoundError:
        return "not installed"
