"""Page-level fusion and the per-page limit, as pure functions (tasks/answer/fusion.py)."""

from __future__ import annotations

import pytest

from tasks.answer.fusion import fuse_pages, per_page, rrf
from tasks.types import Hit


def hit(chunk: str) -> Hit:
    """Chunk ``b2`` is the second chunk of page ``b.md``."""
    return Hit(chunk, 0.5, f"text of {chunk}", chunk[0], {"path": f"{chunk[0]}.md", "uri": f"s3://x/{chunk[0]}.md"})


def ids(hits: list[Hit]) -> list[str]:
    return [h.id for h in hits]


DENSE = [hit(c) for c in ("a1", "a2", "a3", "b1")]
BM25 = [hit(c) for c in ("c1", "b2")]


def test_pages_fuse_by_their_rank_among_pages() -> None:
    """Page b is second among pages on both sides (its chunk b1 only fourth on the dense side, behind three
    chunks of a): fused as pages it ranks first; fused as chunks it would come third, behind a and c."""
    fused = fuse_pages([DENSE, BM25], rrf_k=5)
    assert ids(fused) == ["b2", "b1", "a1", "c1", "a2", "a3"]  # a page's chunks by their own fused score
    assert fused[0].score == fused[1].score == pytest.approx(2 / 7)
    chunks = rrf([ids(DENSE), ids(BM25)], rrf_k=5)
    assert sorted(chunks, key=lambda c: -chunks[c])[:3] == ["a1", "c1", "a2"]


def test_one_side_keeps_its_order_and_scores_grouped_by_page() -> None:
    side = [hit("a1"), hit("b1"), hit("a2")]
    assert ids(fuse_pages([side], rrf_k=5)) == ["a1", "a2", "b1"]
    assert [h.score for h in fuse_pages([side], rrf_k=5)] == [0.5] * 3


def test_a_chunk_found_by_both_sides_appears_once() -> None:
    assert ids(fuse_pages([[hit("a1"), hit("b1")], [hit("b1"), hit("a1")]], rrf_k=5)) == ["a1", "b1"]


@pytest.mark.parametrize(("limit", "expected"), [
    (0, ["a1", "a2", "b1", "c1", "b2"]),  # 0: the ranking as it came
    (1, ["a1", "b1", "c1", "a2", "b2"]),  # distinct pages first, then the pages' further chunks
    (2, ["a1", "a2", "b1", "c1", "b2"]),
])
def test_per_page_puts_a_pages_further_chunks_after_every_pages_first(limit: int, expected: list[str]) -> None:
    ranked = [hit(c) for c in ("a1", "a2", "b1", "c1", "b2")]
    assert ids(per_page(ranked, limit)) == expected
