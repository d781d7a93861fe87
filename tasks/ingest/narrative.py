"""unstructured's narrative-text test for a whole document in one spaCy pass, not one pass per paragraph.

unstructured's HTML parser (which also parses Markdown, reStructuredText, notebooks and pandoc's epub/odt/rtf
output) asks ``is_possible_narrative_text`` of every paragraph it cannot type from its tag. That test runs
spaCy's en_core_web_sm (sentence count, part-of-speech tags) on the paragraph alone: ~90 % of a Markdown
file's parse, and spaCy is ~1.8x faster on the same texts batched through ``nlp.pipe`` (same sentences, same
tags). So during a partition the test is deferred: it answers "narrative" and remembers the text; afterwards
the remembered texts go through spaCy in one ``nlp.pipe`` and unstructured's own test decides each element
from those parses; an element it rejects becomes the ``Text`` element unstructured would have made (the
parser builds both the same way: same text, same metadata, no depth). The answers are unstructured's: only
when spaCy runs changes (tests/ingest/test_narrative.py parses real documents both ways).

Guard, as every dependency patch here: only on the unstructured releases in ``TESTED_UNSTRUCTURED``
(``tasks.ingest.spacy_model``, the same module read: ``html.parser.derive_element_type_from_text`` is the only
caller of the test there and the only maker of ``NarrativeText``), and ``ingest.batch_nlp=false``
(``RAGTUNE_INGEST__BATCH_NLP``) turns it off. Exit condition: drop this module when unstructured classifies a
document's paragraphs in one spaCy pass itself, or lets a caller do so.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

from tasks.ingest.spacy_model import unstructured_tested

_chosen = {"batch": True}  # this process's choice (a parser worker sets it from the settings)
PIPE_BATCH = 64


def use_batched(batch: bool = True) -> None:
    """Choose for this process: batched (deferred) narrative tests, or unstructured's one call per paragraph."""
    _chosen["batch"] = batch


def partition(partitioner: Any, **kwargs: Any) -> list[Any]:
    """``partitioner(**kwargs)``'s elements, narrative tests batched when chosen and the release is tested."""
    if not (_chosen["batch"] and _tested()):
        return list(partitioner(**kwargs))
    with _deferred() as asked:
        raw = list(partitioner(**kwargs))
    return _settle(raw, asked)


@functools.cache
def _tested() -> bool:
    return unstructured_tested()


@contextlib.contextmanager
def _deferred() -> Iterator[set[str]]:
    """While open, the HTML parser's narrative test says yes and collects the texts it was asked about."""
    from unstructured.partition.html import parser

    asked: set[str] = set()
    real = parser.is_possible_narrative_text

    def remember(text: str, *args: Any, **kwargs: Any) -> bool:
        asked.add(text)
        return True

    parser.is_possible_narrative_text = remember
    try:
        yield asked
    finally:
        parser.is_possible_narrative_text = real


def _settle(elements: list[Any], asked: set[str]) -> list[Any]:
    """Each deferred ``NarrativeText`` decided by unstructured's test, on spaCy parses made in one batch."""
    from unstructured.documents.elements import Text
    from unstructured.partition.text_type import is_possible_narrative_text

    deferred = [i for i, e in enumerate(elements) if e.category == "NarrativeText" and e.text in asked]
    if not deferred:
        return elements
    with _parsed({elements[i].text for i in deferred}):
        for i in deferred:
            if not is_possible_narrative_text(elements[i].text):
                elements[i] = Text(elements[i].text, metadata=elements[i].metadata)
    return elements


@contextlib.contextmanager
def _parsed(texts: set[str]) -> Iterator[None]:
    """unstructured's spaCy calls answered from one ``nlp.pipe`` over ``texts`` (others run as usual)."""
    from unstructured.nlp import tokenize

    nlp = tokenize._get_nlp()
    ordered: Sequence[str] = sorted((t for t in texts if len(t) <= nlp.max_length), key=len)
    docs = dict(zip(ordered, nlp.pipe(ordered, batch_size=PIPE_BATCH), strict=True))
    run_pipeline = tokenize._run_pipeline

    def answer(text: str) -> Any:
        found = docs.get(text)
        return found if found is not None else run_pipeline(text)

    tokenize._run_pipeline = answer
    try:
        yield
    finally:
        tokenize._run_pipeline = run_pipeline
