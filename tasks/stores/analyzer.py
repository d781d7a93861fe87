"""Lexical analysis for BM25: English stemming and stop words, done in ragtune rather than in Milvus.

Milvus Lite 3.2 refuses the ``english`` analyzer type and accepts stemmer and stop-word filters
without applying them (only the standard tokenizer with lowercasing runs: "scaling" never matched
"scale"); Milvus 2.3/2.4 servers have no BM25 at all. So the BM25 input field holds pre-analysed
terms and queries are analysed the same way: every backend indexes the same terms, and a collection
records which analyzer built it (``ANALYZER``).

The analysis follows Milvus' (and Lucene's) ``english`` analyzer: word tokens, lowercase, Lucene's
English stop words, Snowball English stemming. Identifiers add their parts: ``map_batches`` also
indexes ``map`` and ``batch``, ``RayServeHandle`` also ``ray``, ``serv``, ``handl``, so a question
that says "map batches" finds the API that spells it ``map_batches``.
"""

from __future__ import annotations

import re
from functools import lru_cache

ANALYZER = "english-snowball-v1"
# Lucene's EnglishAnalyzer stop set, which Milvus' "_english_" stop-word list also is.
STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
    "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
    "will", "with"})
_WORD = re.compile(r"[^\W_]+(?:_[^\W_]+)*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z0-9]+")  # camelCase humps; digits stay attached


def analyze(text: str) -> str:
    """The text's BM25 terms, space-separated (the form the index's BM25 field stores)."""
    return " ".join(terms(text))


def terms(text: str) -> list[str]:
    out: list[str] = []
    for word in _WORD.findall(text):
        out.extend(_word_terms(word))
    return out


@lru_cache(maxsize=65536)
def _word_terms(word: str) -> tuple[str, ...]:
    whole = _term(word.lower())
    parts = [p for piece in word.split("_") for p in (_PART.findall(piece) or [piece])]
    if len(parts) < 2:
        return (whole,) if whole else ()
    return tuple(t for t in (whole, *(_term(p.lower()) for p in parts)) if t)


@lru_cache(maxsize=65536)
def _term(word: str) -> str:
    if word in STOP_WORDS:
        return ""
    return str(_stemmer().stemWord(word))


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import snowballstemmer

    return snowballstemmer.stemmer("english")
