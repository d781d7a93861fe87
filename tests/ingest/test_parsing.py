"""Parsing: isolated workers, hostile files quarantined with reasons (the spaCy hook: test_spacy_model.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.ingest import spacy_model
from tasks.ingest.parser_pool import ParserPool
from tasks.ingest.parsing import (
    NO_LANGUAGE,
    ParseError,
    ParseLimits,
    check_file,
    configure_pandoc,
    notebook_markdown,
    parse_file,
    use_rst_reader,
)
from tests.conftest import shared_data
from tests.ingest.ingest_files import make_pdf, write_good, write_hostile

LIMITS = ParseLimits(timeout_s=20, memory_mb=3072, max_file_mb=2, max_unzipped_mb=16)


@pytest.fixture(scope="module")
def pool() -> Iterator[ParserPool]:
    with ParserPool(1, LIMITS) as p:
        yield p


def test_hostile_files_are_refused_with_reasons_and_good_ones_parse(pool: ParserPool, tmp_path: Path) -> None:
    hostile = write_hostile(tmp_path / "bad", big_mb=3)
    good = write_good(tmp_path / "good")
    jobs = [(name, path, path.suffix) for name, path in {**hostile, **good}.items()]
    results = dict(pool.parse(jobs))
    reasons = {name: results[name] for name in hostile}
    assert all(isinstance(r, str) for r in reasons.values()), reasons
    assert "zip bomb" in reasons["zip_bomb"]
    assert reasons["junk_txt"].startswith("undecodable text: ")
    assert reasons["empty"] == "empty file"
    assert "too large" in reasons["big_line"]
    assert "not a valid zip" in reasons["not_a_docx"]
    assert reasons["truncated_pdf"].startswith("pdf parser failed: ")
    texts = {name: " ".join(e.text for e in results[name]) for name in good}  # type: ignore[union-attr]
    assert "Zebrafish" in texts["utf16"]
    assert "Quokkas können" in texts["latin1"]
    assert "Pangolins" in texts["traversal"]
    assert "Narwhals" in texts["pdf"] and results["pdf"][0].page == 1  # type: ignore[index]
    assert "Axolotls" in texts["docx"]


def test_a_slow_file_times_out_and_the_pool_goes_on(tmp_path: Path) -> None:
    slow = tmp_path / "slow.txt"
    slow.write_text("word " * 1_500_000)  # one 7.5 MB line: partitioning it takes far longer than the bound
    fine = tmp_path / "fine.md"
    fine.write_text("# Fine\n\nStill parsed after the timeout.\n")
    with ParserPool(1, ParseLimits(timeout_s=4, max_file_mb=8)) as small:
        results = dict(small.parse([("slow", slow, ".txt"), ("fine", fine, ".md")]))
    assert results["slow"] == "timeout: parsing took longer than 4 s"
    assert "Still parsed" in " ".join(e.text for e in results["fine"])  # type: ignore[union-attr]


def test_checks_run_before_any_parser(tmp_path: Path) -> None:
    odd = tmp_path / "notes.xyz"
    odd.write_text("text")
    with pytest.raises(ParseError, match="unsupported file type"):
        check_file(odd, ".xyz", LIMITS)
    pdf = tmp_path / "ok.pdf"
    pdf.write_bytes(make_pdf(["Hello PDF"]))
    assert [e.text for e in parse_file(pdf, ".pdf", LIMITS)] == ["Hello PDF"]


def test_notebooks_become_markdown() -> None:
    raw = json.dumps({"cells": [{"cell_type": "markdown", "source": ["# Tune\n", "Intro"]},
                                {"cell_type": "code", "source": "import ray"}]}).encode()
    assert notebook_markdown(raw) == "# Tune\nIntro\n\n```\nimport ray\n```"


RST_WITH_CODE = """Cluster FAQ
===========

Run several :ref:`jobs <jobs-overview>` on one cluster. Start the head node:

.. code-block:: bash

    ray start --head --port 6379

- a list item that says what the command does
"""


def test_rst_converts_without_highlighting_and_parses_the_same(tmp_path: Path) -> None:
    """pandoc loads its syntax definitions (~0.45 s a file) to colour code unstructured reads as text: skipped."""
    import pypandoc
    from unstructured.partition.html import partition_html

    source = tmp_path / "faq.rst"
    source.write_text(RST_WITH_CODE)
    highlighted = pypandoc.convert_file(str(source), "html", format="rst")  # pypandoc as it ships
    configure_pandoc()
    configure_pandoc()  # idempotent: the flag is added once
    plain = pypandoc.convert_file(str(source), "html", format="rst")
    assert 'class="sourceCode' in highlighted and "sourceCode" not in plain
    assert "ray start --head --port 6379" in plain

    def elements(html: str) -> list[tuple[str, str]]:
        spacy_model.install()
        return [(e.category, e.text) for e in partition_html(text=html, languages=NO_LANGUAGE)]

    assert elements(plain) == elements(highlighted)
    use_rst_reader("pandoc")  # the reader unstructured uses (docutils is the default: tests/ingest/test_rst.py)
    try:
        assert [(e.type, e.text) for e in parse_file(source, ".rst", LIMITS)] == elements(plain)
    finally:
        use_rst_reader("docutils")


@pytest.mark.data
def test_shared_example_docs_never_crash_the_pool() -> None:
    root = shared_data()
    if root is None:
        pytest.skip("set RAGTUNE_SHARED_DATA to ../shared/data")
    files = [p for d in ("unstructured_example_docs", "malformed_pdfs") for p in sorted((root / d).rglob("*"))
             if p.is_file()]
    with ParserPool(2, ParseLimits(timeout_s=60)) as p:
        results = dict(p.parse([(str(f), f, f.suffix.lower()) for f in files]))
    assert set(results) == {str(f) for f in files}
    parsed = [k for k, v in results.items() if not isinstance(v, str)]
    assert len(parsed) > 100, f"only {len(parsed)} of {len(files)} parsed"
    print(json.dumps({"files": len(files), "parsed": len(parsed), "pid": os.getpid()}))
