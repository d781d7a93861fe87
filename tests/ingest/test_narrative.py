"""Batched narrative-text tests (tasks.ingest.narrative): the same elements as unstructured's one spaCy call per
paragraph, on every format that goes through its HTML parser; the off switch and the version check restore
unstructured's own path; real documents (the opt-in data tier) parse the same both ways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.ingest import narrative
from tasks.ingest.parser_pool import ParserPool
from tasks.ingest.parsing import SUPPORTED, ParseError, ParseLimits, parse_file
from tests.conftest import shared_data

# Paragraphs unstructured calls narrative and paragraphs it does not (all caps, no verb, one word, numbers).
PARAGRAPHS = ["Ray Serve scales deployments across a cluster. Each replica handles requests in parallel.",
              "THE AUTOSCALER SETTINGS", "Replica placement groups", "Install it with pip and run the server.",
              "Latency, throughput and cost", "42", "Deployments restart failed replicas automatically.",
              "See the API Reference For Details", "A closing paragraph. It has two sentences that both count."]
DOCS = {
    ".md": "# Serving\n\n" + "\n\n".join(PARAGRAPHS) + "\n\n## Lists\n\n- one item here\n- another item\n",
    ".rst": "Serving\n=======\n\n" + "\n\n".join(PARAGRAPHS) + "\n\nScaling\n-------\n\n* one item\n* two items\n",
    ".html": "<html><body><h1>Serving</h1>" + "".join(f"<p>{p}</p>" for p in PARAGRAPHS) + "</body></html>",
}
LIMITS = ParseLimits(timeout_s=30, memory_mb=3072, max_file_mb=2, max_unzipped_mb=16)


@pytest.fixture
def docs(tmp_path: Path) -> list[Path]:
    paths = []
    for suffix, text in DOCS.items():
        (path := tmp_path / f"doc{suffix}").write_text(text)
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def batched_again() -> Iterator[None]:
    yield
    narrative.use_batched(True)


def _forget_parses() -> None:
    """unstructured's per-text caches emptied: the next parse asks spaCy again."""
    from unstructured.nlp import tokenize

    for cached in (tokenize._process_cached, tokenize._tokenize_for_cache, tokenize.pos_tag, tokenize.word_tokenize):
        cached.cache_clear()


def _both_ways(path: Path) -> tuple[list, list]:
    out = []
    for batch in (False, True):
        narrative.use_batched(batch)
        _forget_parses()  # neither way reads the other's spaCy parses
        out.append(parse_file(path, path.suffix))
    return out[0], out[1]


def test_batched_elements_equal_unstructured_own(docs: list[Path]) -> None:
    for path in docs:
        own, batched = _both_ways(path)
        assert batched == own, path.suffix
        types = {e.type for e in own}
        assert {"NarrativeText", "UncategorizedText"} <= types, (path.suffix, types)  # both answers occur


def test_one_spacy_pass_per_document(docs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Batched, spaCy runs once over the document's deferred paragraphs, never paragraph by paragraph."""
    from unstructured.nlp import tokenize

    calls: dict[str, int] = {"single": 0, "pipe": 0}
    nlp = tokenize._get_nlp()
    real_pipe, real_run = nlp.pipe, tokenize._run_pipeline

    def pipe(texts, **kwargs):  # type: ignore[no-untyped-def]
        calls["pipe"] += 1
        return real_pipe(texts, **kwargs)

    def single(text: str):  # type: ignore[no-untyped-def]
        calls["single"] += 1
        return real_run(text)

    monkeypatch.setattr(nlp, "pipe", pipe)
    monkeypatch.setattr(tokenize, "_run_pipeline", single)
    _forget_parses()
    parse_file(docs[0], ".md")
    assert calls == {"single": 0, "pipe": 1}
    narrative.use_batched(False)
    _forget_parses()
    parse_file(docs[0], ".md")
    assert calls["pipe"] == 1 and calls["single"] >= 5


def test_untested_release_keeps_unstructured_path(docs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from unstructured.partition.html import parser

    real = parser.is_possible_narrative_text
    seen = []
    monkeypatch.setattr(narrative, "_tested", lambda: False)
    monkeypatch.setattr(parser, "is_possible_narrative_text", lambda text, *a, **k: seen.append(text) or real(text))
    elements = parse_file(docs[0], ".md")
    assert seen and "UncategorizedText" in {e.type for e in elements}  # asked paragraph by paragraph


def test_switch_reaches_parser_workers(docs: list[Path]) -> None:
    """``ingest.batch_nlp`` travels to the worker processes; both ways give the same elements."""
    results = []
    for batch in (True, False):
        with ParserPool(1, LIMITS, batch_nlp=batch) as pool:
            results.append(dict(pool.parse([(p.suffix, p, p.suffix) for p in docs])))
    assert results[0] == results[1]
    assert all(isinstance(v, list) and v for v in results[0].values())


@pytest.mark.data
def test_real_documents_parse_the_same() -> None:
    """Every Ray docs page and every example document (all formats but PDF): identical elements both ways."""
    root = shared_data()
    if root is None:
        pytest.skip("set RAGTUNE_SHARED_DATA to ../shared/data")
    roots = [root / "ray_docs_qa" / "docs", root / "unstructured_example_docs"]
    files = sorted(p for r in roots for p in r.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED
                   and p.suffix.lower() != ".pdf")
    assert len(files) > 600
    differing = []
    for path in files:
        try:
            own, batched = _both_ways(path)
        except ParseError:
            continue
        if own != batched:
            differing.append(path.name)
    assert not differing
