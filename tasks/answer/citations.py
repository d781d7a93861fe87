"""Citations in an answer: the ``[n]`` the model wrote, else the chunks its sentences were drawn from.

``[n]`` is the prompt's n-th document (``Prompt.sources[n - 1]``); numbers outside the prompt are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.types import Hit

_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_STOP = frozenset({"the", "and", "for", "are", "was", "were", "with", "that", "this", "from", "you", "your",
                   "can", "has", "have", "not", "but", "all", "any", "its"})


@dataclass(frozen=True)
class Citation:
    n: int
    uri: str
    section: str
    page: int
    score: float
    chunk_id: str
    how: str  # "model": the answer wrote [n]; "overlap": an answer sentence is mostly words of chunk n


def parse_citations(text: str, sources: list[Hit]) -> list[Citation]:
    """Citations ``[n]`` / ``[n, m]`` in the answer, mapped to the prompt's chunks; out-of-range numbers dropped."""
    seen: dict[int, Citation] = {}
    for match in _CITATION.finditer(text):
        for part in match.group(1).split(","):
            n = int(part)
            if 1 <= n <= len(sources) and n not in seen:
                seen[n] = _citation(n, sources[n - 1], "model")
    return list(seen.values())


def attribute_by_overlap(text: str, sources: list[Hit], min_share: float = 0.6) -> list[Citation]:
    """Chunks that answer sentences were drawn from: most of a sentence's words occur in the chunk.

    The base 135M model rarely writes ``[n]`` itself; this keeps its answers traceable to sources.
    """
    found: dict[int, Citation] = {}
    chunk_words = [_words(h.text) for h in sources]
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        words = _words(sentence)
        if len(words) < 2:
            continue
        shares = [len(words & cw) / len(words) for cw in chunk_words]
        best = max(range(len(shares)), key=shares.__getitem__, default=None)
        if best is not None and shares[best] >= min_share and best + 1 not in found:
            found[best + 1] = _citation(best + 1, sources[best], "overlap")
    return sorted(found.values(), key=lambda c: c.n)


def cite(text: str, sources: list[Hit]) -> list[Citation]:
    """The model's own citations when it wrote any, else attribution by word overlap."""
    return parse_citations(text, sources) or attribute_by_overlap(text, sources)


def _citation(n: int, hit: Hit, how: str) -> Citation:
    meta = hit.metadata
    return Citation(n, hit.uri, str(meta.get("section") or ""), int(meta.get("page") or 0), hit.score, hit.id, how)


def _words(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9][a-z0-9_\-]*", text.lower())
    return {w for w in words if (len(w) > 2 or w.isdigit()) and w not in _STOP}
