"""Scores of one arm's answers, as pure functions over plain values, and the paired bootstrap.

Answer text is compared after SQuAD's normalisation (lower case, punctuation and articles removed,
spaces collapsed), once the answering format's own marks are gone: the ``According to [n]:`` lead and
``[n]`` citations. A row with several reference answers scores its best match, as SQuAD does.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_LEAD = re.compile(r"^\s*according to \[\d{1,3}(?:\s*,\s*\d{1,3})*\]\s*:?\s*", re.IGNORECASE)
_CITATION = re.compile(r"\[\d{1,3}(?:\s*,\s*\d{1,3})*\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


# -- answer quality -----------------------------------------------------------------------------------
def strip_citations(text: str) -> str:
    return _CITATION.sub(" ", _LEAD.sub("", text))


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalize_answer (lower, no punctuation, no articles, single spaces)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    pred = normalize_answer(strip_citations(prediction))
    return float(any(pred == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: Sequence[str]) -> float:
    pred = normalize_answer(strip_citations(prediction)).split()
    return max((_f1(pred, normalize_answer(r).split()) for r in references), default=0.0)


def _f1(pred: list[str], ref: list[str]) -> float:
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# -- labels (scored by likelihood, no parsing) --------------------------------------------------------
def best_option(log_likelihoods: dict[str, float]) -> str:
    """The option the model finds likeliest; ties go to the first option."""
    return max(log_likelihoods, key=lambda k: log_likelihoods[k])


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float | None:
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold) if gold else None


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None) -> float | None:
    """Mean F1 over the label set (default: the gold labels); a label never predicted nor gold scores nothing."""
    if not gold:
        return None
    classes = list(labels) if labels else sorted(set(gold))
    return sum(_class_f1(gold, predicted, c) for c in classes) / len(classes)


def _class_f1(gold: Sequence[str], predicted: Sequence[str], label: str) -> float:
    tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
    fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
    fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# -- abstention ---------------------------------------------------------------------------------------
def no_answer_f1(unanswerable: Sequence[bool], abstained: Sequence[bool]) -> float | None:
    """F1 of abstaining as the positive class: right abstentions against wrong ones and missed ones."""
    if not any(unanswerable):
        return None
    pairs = list(zip(unanswerable, abstained, strict=True))
    tp, fp, fn = (sum(u and a for u, a in pairs), sum(a and not u for u, a in pairs),
                  sum(u and not a for u, a in pairs))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# -- cost ---------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered, rank = sorted(values), q / 100 * (len(values) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# -- paired bootstrap ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """``arm`` minus ``baseline`` on the same questions, with a percentile bootstrap interval."""

    delta: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "low": self.low, "high": self.high, "n": self.n}


def paired_bootstrap(arm: Sequence[T], baseline: Sequence[T], statistic: Callable[[list[T]], float | None],
                     resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Difference | None:
    """Resample question indices with replacement, the same indices for both arms; the interval is the
    percentiles of ``statistic(arm) - statistic(baseline)`` over the resamples. None without questions."""
    if len(arm) != len(baseline):
        raise ValueError(f"paired bootstrap needs the same questions: {len(arm)} vs {len(baseline)}")
    observed = _delta(statistic, list(arm), list(baseline))
    if observed is None:
        return None
    rng, n = random.Random(seed), len(arm)
    deltas: list[float] = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        d = _delta(statistic, [arm[i] for i in idx], [baseline[i] for i in idx])
        if d is not None:
            deltas.append(d)
    tail = (1 - confidence) / 2 * 100
    low, high = percentile(deltas, tail), percentile(deltas, 100 - tail)
    return Difference(observed, observed if low is None else low, observed if high is None else high, n)


def _delta(statistic: Callable[[list[T]], float | None], arm: list[T], baseline: list[T]) -> float | None:
    a, b = statistic(arm), statistic(baseline)
    return None if a is None or b is None else a - b
