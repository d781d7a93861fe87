"""Grounded examples: the answering path's prompt (numbered documents + question) with a cited answer.

For each curated question, the chunks the serving retriever returns become the context; when one of
them contains most of the answer's content words, the target is the curated answer citing it ``[n]``.
A share of questions is paired with context retrieved for another group's question, whose documents
do not contain the answer: their target is ``ABSTAIN_ANSWER`` (abstention is learnt, not hoped for).
The messages are built by ``tasks.answer.prompting`` itself, so training and serving prompts cannot drift.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tasks.answer import prompting
from tasks.dataset.rows import ABSTAIN_ANSWER, DatasetRow
from tasks.settings import DatasetSettings, Settings
from tasks.types import Hit

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(re.findall(r"\w+", "a an and are as at be by can do does for from has have how i in is it its "
                                     "of on or that the this to was were what when where which who why will with "
                                     "you your"))


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def support(answer: str, passage: str) -> float:
    """Share of the answer's content words found in the passage (0 when the answer has none)."""
    words = content_words(answer)
    return len(words & content_words(passage)) / len(words) if words else 0.0


def training_messages(question: str, passages: Sequence[Hit | str], answer: str,
                      specials: Sequence[str] = prompting.CHAT_SPECIALS) -> list[dict[str, str]]:
    """One training conversation: system + user (numbered documents, question) exactly as serving renders
    them (``prompting.context_messages``), then the answer."""
    return [*prompting.context_messages(question, list(passages), list(specials)),
            {"role": "assistant", "content": answer}]


def lead_with_citation(answer: str, n: int) -> str:
    """The answer led by its source: ``According to [n]: answer``.

    Leading, not trailing: every grounded target then starts the same way, and the first answer token is
    a choice between citing and ``I don't know.`` that a small model learns from a few dozen rows. With the
    citation at the end, the demo's fine-tune (15 grounded rows, each starting with a different word, and 3
    abstentions all starting with "I") answered "I don't know." to every question, context or not.
    """
    return f"According to [{n}]: {answer.strip()}"


def fit_passages(tokenizer: Any, question: str, passages: list[Hit], answer: str, max_tokens: int) -> list[Hit]:
    """Drop the lowest-ranked passages until the whole conversation fits ``max_tokens``."""
    specials = list(tokenizer.all_special_tokens)
    while passages:
        text = tokenizer.apply_chat_template(training_messages(question, passages, answer, specials), tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens:
            break
        passages = passages[:-1]
    return passages


def grounded_rows(tokenizer: Any, curated: Sequence[DatasetRow], retrieved: dict[str, list[Hit]],
                  cfg: DatasetSettings) -> list[DatasetRow]:
    """One grounded row per curated question whose retrieved context supports its answer."""
    rows: list[DatasetRow] = []
    specials = list(tokenizer.all_special_tokens)
    for row in curated:
        answer = row.response or ""
        # leave room for the citation lead the answer gains
        passages = fit_passages(tokenizer, row.question or "", retrieved.get(row.id, []), lead_with_citation(answer, 0),
                                cfg.max_seq_len)
        scores = [support(answer, p.text) for p in passages]
        if not scores or max(scores) < cfg.support_threshold:
            continue
        best = scores.index(max(scores)) + 1
        target = lead_with_citation(answer, best)
        messages = training_messages(row.question or "", passages, target, specials)
        rows.append(DatasetRow(f"{row.id}:grounded", row.question, target, row.group, row.label, "grounded",
                               row.split, messages))
    return rows


def abstain_rows(tokenizer: Any, curated: Sequence[DatasetRow], retrieved: dict[str, list[Hit]],
                 counts: dict[str, int], cfg: DatasetSettings, seed: int) -> list[DatasetRow]:
    """Per split, up to ``counts[split]`` questions paired with another group's context lacking their answer."""
    rows: list[DatasetRow] = []
    specials = list(tokenizer.all_special_tokens)
    rng = random.Random(seed)
    candidates = sorted((r for r in curated if retrieved.get(r.id)), key=lambda r: _order(seed, r.id))
    made = dict.fromkeys(counts, 0)
    for row in candidates:
        donors = [d for d in candidates if d.group != row.group and d.split == row.split]
        if made.get(row.split, 0) >= counts.get(row.split, 0) or not donors:
            continue
        passages = retrieved[rng.choice(donors).id]
        if max(support(row.response or "", p.text) for p in passages) >= cfg.support_threshold:
            continue  # the other context happens to answer it: not an abstention example
        passages = fit_passages(tokenizer, row.question or "", passages, ABSTAIN_ANSWER, cfg.max_seq_len)
        messages = training_messages(row.question or "", passages, ABSTAIN_ANSWER, specials)
        rows.append(DatasetRow(f"{row.id}:abstain", row.question, ABSTAIN_ANSWER, row.group, row.label, "abstain",
                               row.split, messages))
        made[row.split] += 1
    return rows


def abstain_counts(grounded: Sequence[DatasetRow], share: float) -> dict[str, int]:
    """Abstention rows per split: ``share`` of its grounded rows, at least one so eval can measure abstention."""
    per_split = Counter(r.split for r in grounded)
    return {split: max(1, round(share * n)) for split, n in per_split.items()} if share > 0 else {}


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{key}".encode()).hexdigest()


def retrieve_passages(settings: Settings, collection: str, rows: Sequence[DatasetRow],
                      k: int) -> tuple[dict[str, list[Hit]], str]:
    """Context for each curated question, retrieved the way serving retrieves it; and the generation used."""
    from tasks.answer import retrieval
    from tasks.stores import milvus
    out: dict[str, list[Hit]] = {}
    served_by = ""
    with milvus.connect(settings) as index:
        for row in rows:
            found = retrieval.retrieve(settings, collection, row.question or "", k, settings.answer.mode, index)
            out[row.id], served_by = list(found.hits), found.collection
    return out, served_by
