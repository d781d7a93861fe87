"""Chunking: sections by heading, title path in the text, every chunk within the embedding model's window."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.ingest.chunking import DocInfo, chunk_elements, chunker_settings, load_tokenizer, sections, split_text
from tasks.ingest.parsing import Element
from tasks.runtime.sources import embedding_source
from tasks.types import chunk_id

DOC = DocInfo(doc_id="d1", uri="file:///docs/guide.md", path="guide.md", doc_hash="h1", name="guide")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(str(embedding_source().path))


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text)["input_ids"])  # special tokens included, as the model sees it


def test_sections_follow_heading_levels() -> None:
    elements = [Element("Title", "Guide", depth=0), Element("NarrativeText", "intro"),
                Element("Title", "Install", depth=1), Element("NarrativeText", "pip"),
                Element("Title", "Linux", depth=2), Element("NarrativeText", "apt"),
                Element("Title", "Usage", depth=1), Element("ListItem", "run it")]
    assert [(path, [e.text for e in body]) for path, body in sections(elements)] == [
        (["Guide"], ["intro"]), (["Guide", "Install"], ["pip"]), (["Guide", "Install", "Linux"], ["apt"]),
        (["Guide", "Usage"], ["run it"])]


def test_chunks_carry_title_path_and_metadata(tokenizer: Any) -> None:
    elements = [Element("Title", "Ray Serve", depth=0), Element("Title", "Autoscaling", depth=1),
                Element("NarrativeText", "Replicas scale with queue length.", page=3),
                Element("ListItem", "min_replicas sets the floor.", page=3)]
    [chunk] = chunk_elements(elements, DOC, tokenizer, 256)
    assert chunk.text == "Ray Serve > Autoscaling\nReplicas scale with queue length. min_replicas sets the floor."
    assert (chunk.title, chunk.section, chunk.page) == ("Ray Serve", "Ray Serve > Autoscaling", 3)
    assert chunk.element_types == ("ListItem", "NarrativeText")
    assert (chunk.id, chunk.doc_hash, chunk.uri) == (chunk_id("d1", 0), "h1", DOC.uri)


def test_untitled_documents_use_the_file_name(tokenizer: Any) -> None:
    [chunk] = chunk_elements([Element("NarrativeText", "Just text.")], DOC, tokenizer, 256)
    assert chunk.text == "guide\nJust text."


def test_every_chunk_fits_the_window_and_no_word_is_lost(tokenizer: Any) -> None:
    long_heading = " ".join(["Extraordinarily", "long", "heading"] * 40)
    paragraph = " ".join(f"token{i} supercalifragilistic," for i in range(700))
    elements = [Element("Title", "Doc", depth=0), Element("Title", long_heading, depth=1),
                *[Element("NarrativeText", f"Sentence number {i} about clusters.") for i in range(80)],
                Element("NarrativeText", paragraph), Element("Table", "a b c " * 200)]
    chunks = chunk_elements(elements, DOC, tokenizer, 256)
    assert max(_tokens(tokenizer, c.text) for c in chunks) <= 256
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    body_words = [w for c in chunks for w in c.text.split("\n", 1)[1].split()]
    source_words = [w for e in elements[2:] for w in e.text.split()]
    assert body_words == source_words
    assert chunk_elements(elements, DOC, tokenizer, 256) == chunks  # deterministic


def test_split_text_respects_budget_and_order(tokenizer: Any) -> None:
    text = "alpha " * 50 + "x" * 3000 + " omega"
    pieces = split_text(text, tokenizer, 32)
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= 32 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_small_sections_merge_up_to_the_budget_keeping_their_headings(tokenizer: Any) -> None:
    elements = [Element("Title", "Cluster", depth=0), Element("Title", "Nodes", depth=1),
                Element("NarrativeText", "Use ray.nodes() to list nodes."),
                Element("Title", "Resources", depth=1), Element("NarrativeText", "Use ray.cluster_resources()."),
                Element("Title", "Big", depth=1), Element("NarrativeText", "word " * 240)]
    chunks = chunk_elements(elements, DOC, tokenizer, 256)
    assert chunks[0].text == "Cluster > Nodes\nUse ray.nodes() to list nodes.\nResources\nUse ray.cluster_resources()."
    assert chunks[0].section == "Cluster > Nodes"
    assert chunks[1].text.startswith("Cluster > Big\nword word")  # too big to join: its own chunk, own prefix
    assert max(_tokens(tokenizer, c.text) for c in chunks) <= 256


def test_generated_pages_chunk_as_their_own_pages(tokenizer: Any) -> None:
    doc = DocInfo(doc_id="d2", uri="file:///docs/data/api/dataset.rst", path="data/api/dataset.rst", doc_hash="h",
                  name="dataset")
    target = "doc/ray.data.Dataset.map.html"
    elements = [Element("Title", "Dataset API", depth=0), Element("NarrativeText", "Dataset.map"),
                Element("Title", "Dataset API", depth=0, target=target),
                Element("Title", "ray.data.Dataset.map", depth=1, target=target),
                Element("NarrativeText", "Dataset.map", target=target)]
    own, generated = chunk_elements(elements, doc, tokenizer, 256)
    assert (own.path, own.chunk_index) == ("data/api/dataset.rst", 0)
    assert generated.path == "data/api/doc/ray.data.Dataset.map.html"
    assert (generated.chunk_index, generated.doc_id) == (1, "d2")
    assert generated.text == "Dataset API > ray.data.Dataset.map\nDataset.map"


def test_overlap_repeats_the_tail_of_the_chunk_before_within_a_section(tokenizer: Any) -> None:
    elements = [Element("Title", "Doc", depth=0),
                *[Element("NarrativeText", f"Sentence number {i} about clusters.") for i in range(120)],
                Element("Title", "Other", depth=1), Element("NarrativeText", "A short section.")]
    plain = chunk_elements(elements, DOC, tokenizer, 128)
    assert chunk_elements(elements, DOC, tokenizer, 128, overlap_tokens=0) == plain
    chunks = chunk_elements(elements, DOC, tokenizer, 128, overlap_tokens=24)
    assert max(_tokens(tokenizer, c.text) for c in chunks) <= 128
    first, second = (c.text.split("\n", 1)[1] for c in chunks[:2])
    repeated = max((first[i:] for i in range(len(first)) if second.startswith(first[i:] + " ")), key=len)
    assert 12 <= len(tokenizer(repeated, add_special_tokens=False)["input_ids"]) <= 24, repeated
    assert not chunks[-1].text.split("\n", 1)[1].startswith("clusters")  # a new section repeats nothing
    assert chunker_settings(256, "m") == {"name": "sections", "version": 2, "max_tokens": 256, "tokenizer": "m"}
    assert chunker_settings(256, "m", 24)["overlap_tokens"] == 24
