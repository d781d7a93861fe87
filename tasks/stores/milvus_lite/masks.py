"""Validity masks for Milvus Lite's searches, from dict-key intersections instead of a pass over every row.

The rule milvus-lite applies row by row is "a row is valid unless its primary key has a later event":
a version in another segment or in the memtable, a flushed tombstone (``DeltaIndex``) or a memtable
delete, each with a larger sequence number. Segments are immutable and hold each key once, so only the
rows whose key has such an event can be invalid; they are found with dict-key intersections (C loops
over the smaller side) and cleared in an all-true mask.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

# Segments are immutable (a flush or compaction makes new Segment objects), so the versions of the keys
# they share are a function of the segment set: computed once per set (its cost: docs/retrieval.md), reused.
# Kept per collection, under its memtable (the per-collection object both searches see; a flush replaces
# it, and then the segments change too): an entry holds its segments alive only while its collection
# lives and until its next search sees other segments.
_shared_cache: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], tuple[tuple[Any, ...], dict[Any, int]]]] = (
    weakref.WeakKeyDictionary())
_cache_lock = threading.Lock()


def valid_masks(segments: Sequence[Any], versions_over: Sequence[Any], later: dict[Any, int], owner: Any,
                later_for: Callable[[Any], dict[Any, int]] | None = None) -> list[np.ndarray]:
    """Per segment: True where the row is the newest version of its key and no later event shadows it.

    ``versions_over``: the segments whose versions compete (upstream: in-scope ones for dense, all for
    sparse); ``later``: key -> sequence of its latest memtable version or delete; ``later_for(segment)``:
    extra events that apply to that segment only (sparse: partition-scoped memtable deletes); ``owner``:
    the collection's memtable, under which the shared-key versions are cached.
    """
    shadow = max_into(dict(later), _shared_versions(versions_over, owner).items())
    if later_for is None:
        return [_mask(seg, shadow) for seg in segments]
    return [_mask(seg, max_into(dict(shadow), later_for(seg).items())) for seg in segments]


def memtable_mask(pks: Sequence[Any], seqs: Sequence[int], segments: Sequence[Any],
                  later: dict[Any, int]) -> np.ndarray:
    """Memtable rows (few: flushes empty it): valid unless a segment or ``later`` holds a larger sequence."""
    out = np.ones(len(pks), dtype=bool)
    for j, (pk, seq) in enumerate(zip(pks, seqs, strict=True)):
        out[j] = max(_newest(pk, segments), later.get(pk, -1)) <= int(seq)
    return out


def max_into(target: dict[Any, int], items: Iterable[tuple[Any, int]]) -> dict[Any, int]:
    """``target`` with each key's sequence raised to the largest seen in ``items``."""
    for pk, seq in items:
        if seq > target.get(pk, -1):
            target[pk] = seq
    return target


def unique_keys(segments: Iterable[Any]) -> bool:
    """Whether every segment holds each key once (what the masks assume; else upstream's search runs)."""
    return all(len(s.pk_to_row) == s.num_rows for s in segments)


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
