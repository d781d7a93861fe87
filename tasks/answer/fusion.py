"""Ranking pages rather than chunks: reciprocal-rank fusion over pages, and the per-page limit.

A question is answered by a page (a source file, or a page Sphinx generates); several neighbouring
chunks of one page in the top k crowd out other pages that may hold the answer. So when the results
are to be distinct pages, the fusion ranks pages too: on each side (dense, BM25) a page's rank is the
rank of its best chunk among that side's pages, and RRF sums 1 / (rrf_k + rank) over the sides. Fusing
chunk ranks and removing repeated pages afterwards instead lets a page with three chunks at the top of
one side push every other page of that side down three places (docs/retrieval.md measures both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tasks.types import Hit


def page_of(hit: Hit) -> str:
    return hit.path or hit.uri


def rrf(ranked: Sequence[Sequence[str]], rrf_k: int) -> dict[str, float]:
    """Reciprocal-rank fusion: each key scores the sum over lists of 1 / (rrf_k + its 1-based rank)."""
    scores: dict[str, float] = {}
    for keys in ranked:
        for rank, key in enumerate(keys, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (rrf_k + rank)
    return scores


def fuse_pages(sides: Sequence[Sequence[Hit]], rrf_k: int) -> list[Hit]:
    """Every chunk of the ranked ``sides``, pages by their fused page score, a page's chunks by their fused
    chunk score. Fusing two sides, a hit's score becomes its page's; one side keeps its own scores."""
    pages = rrf([list(dict.fromkeys(page_of(h) for h in side)) for side in sides], rrf_k)
    chunks = rrf([[h.id for h in side] for side in sides], rrf_k)
    unique: dict[str, Hit] = {}
    for side in sides:
        for hit in side:
            unique.setdefault(hit.id, hit)
    order = sorted(unique.values(), key=lambda h: (-pages[page_of(h)], -chunks[h.id]))
    return [replace(h, score=pages[page_of(h)]) for h in order] if len(sides) > 1 else order


def per_page(hits: Sequence[Hit], limit: int) -> list[Hit]:
    """``hits`` with each page's chunks after its first ``limit`` moved behind every page's first ``limit``
    (0 = unchanged): the top k are distinct pages while there are k of them, and k hits are never fewer."""
    if not limit:
        return list(hits)
    seen: dict[str, int] = {}
    first: list[Hit] = []
    rest: list[Hit] = []
    for hit in hits:
        seen[page_of(hit)] = seen.get(page_of(hit), 0) + 1
        (first if seen[page_of(hit)] <= limit else rest).append(hit)
    return first + rest
