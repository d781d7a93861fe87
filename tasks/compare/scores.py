"""Per-question scores of an arm's replies, the arm's summary, and its differences against RAG only.

Pure functions over plain records (one dict per question, in the test file's order for every arm, so
the bootstrap can pair them). Definitions:
- ``em``/``f1``: answerable questions only (SQuAD normalisation, best reference);
- ``label_accuracy``/``label_macro_f1``: labelled questions, the likeliest option against the label;
- ``abstention_accuracy``: the share of unanswerable questions the arm abstained on; ``no_answer_f1``:
  abstaining as the positive class over every question;
- ``recall_at_k``: retrieval arms, answerable questions naming a source: a retrieved chunk comes from it;
- ``citation_validity``: answers citing ``[n]``: every cited document exists and holds half the answer's
  words (``tasks.training.scoring.citation_valid``);
- ``supported_share``: retrieval arms, answered answerable questions: a cited chunk holds the reference
  answer (``support`` >= the dataset build's threshold); an answer citing nothing is unsupported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tasks.compare import metrics as m
from tasks.compare.answers import Reply
from tasks.compare.qa import QARow
from tasks.compare.recipes import from_source

Record = dict[str, Any]
QUALITY = ("em", "f1", "label_accuracy", "label_macro_f1", "abstention_accuracy", "no_answer_f1")
GROUNDING = ("recall_at_k", "citation_validity", "supported_share")


def score_reply(row: QARow, reply: Reply, retrieved: Sequence[Any] | None, threshold: float) -> Record:
    """One question's scores; ``retrieved`` is the retriever's top-k for retrieval arms, None for closed book."""
    from tasks.dataset.grounding import support
    from tasks.training.scoring import citation_valid, cited, is_abstention

    abstained = is_abstention(reply.text)
    numbers = [n for n in cited(reply.text) if 1 <= n <= len(reply.sources)]
    chunks = [reply.sources[n - 1].text for n in numbers]
    grounded = retrieved is not None and row.answerable and not abstained
    return {
        "id": row.id, "prediction": reply.text, "answerable": row.answerable, "abstained": abstained,
        "em": m.exact_match(reply.text, row.answers) if row.answerable else None,
        "f1": m.token_f1(reply.text, row.answers) if row.answerable else None,
        "label": row.label, "predicted_label": m.best_option(reply.option_logprobs) if reply.option_logprobs else None,
        "recall": (any(from_source(h, row.source) for h in retrieved)
                   if retrieved is not None and row.source and row.answerable else None),
        "citation_valid": citation_valid(reply.text, {n: h.text for n, h in enumerate(reply.sources, start=1)}),
        "supported": (any(support(row.answers[0], c) >= threshold for c in chunks) if grounded else None),
        "prompt_tokens": reply.prompt_tokens, "seconds": reply.seconds,
    }


def _values(records: Sequence[Record], key: str) -> list[float]:
    return [float(r[key]) for r in records if r.get(key) is not None]


def _labels(records: Sequence[Record]) -> tuple[list[str], list[str]]:
    pairs = [(r["label"], r["predicted_label"]) for r in records if r.get("label") and r.get("predicted_label")]
    return [g for g, _ in pairs], [p for _, p in pairs]


def _abstention(records: Sequence[Record]) -> float | None:
    return m.mean([float(r["abstained"]) for r in records if not r["answerable"]])


def _no_answer(records: Sequence[Record]) -> float | None:
    return m.no_answer_f1([not r["answerable"] for r in records], [r["abstained"] for r in records])


STATISTICS: dict[str, Callable[[Sequence[Record]], float | None]] = {
    "em": lambda rs: m.mean(_values(rs, "em")),
    "f1": lambda rs: m.mean(_values(rs, "f1")),
    "label_accuracy": lambda rs: m.accuracy(*_labels(rs)),
    "label_macro_f1": lambda rs: m.macro_f1(*_labels(rs)),
    "abstention_accuracy": _abstention,
    "no_answer_f1": _no_answer,
    "recall_at_k": lambda rs: m.mean(_values(rs, "recall")),
    "citation_validity": lambda rs: m.mean(_values(rs, "citation_valid")),
    "supported_share": lambda rs: m.mean(_values(rs, "supported")),
}


def summarize(records: Sequence[Record]) -> dict[str, float | None]:
    """The arm's scores, and its cost per question: prompt tokens, p50/p95 seconds per answer."""
    seconds = _values(records, "seconds")
    return {**{name: stat(records) for name, stat in STATISTICS.items()},
            "prompt_tokens": m.mean(_values(records, "prompt_tokens")),
            "latency_p50_s": m.percentile(seconds, 50), "latency_p95_s": m.percentile(seconds, 95)}


def differences(records: Sequence[Record], baseline: Sequence[Record], resamples: int = 1000,
                seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each quality metric of the arm minus the baseline's, with a 95 % paired-bootstrap interval."""
    out = {}
    for name in QUALITY:
        diff = m.paired_bootstrap(list(records), list(baseline), STATISTICS[name], resamples, seed=seed)
        if diff is not None:
            out[name] = diff.as_dict()
    return out


def primary_metric(records: Sequence[Record]) -> str:
    """The metric that names the winner: label accuracy when at least half the questions carry a label (a closed
    set such as yes/no/maybe), else token F1."""
    return "label_accuracy" if 2 * sum(bool(r.get("label")) for r in records) >= len(records) else "f1"
