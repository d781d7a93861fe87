"""The comparison as a reader sees it: typed results, the markdown tables, the winner, the chart."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from tasks.compare import metrics as m
from tasks.compare.scores import QUALITY, STATISTICS, Record

LABELS = {"em": "EM", "f1": "token F1", "label_accuracy": "label acc.", "label_macro_f1": "label macro-F1",
          "abstention_accuracy": "abstention acc.", "no_answer_f1": "no-answer F1", "recall_at_k": "recall@k",
          "citation_validity": "citation validity", "supported_share": "supported", "prompt_tokens": "prompt tokens",
          "latency_p50_s": "p50 s", "latency_p95_s": "p95 s", "train_s": "train s", "train_tokens": "train tokens"}
COST = ("prompt_tokens", "latency_p50_s", "latency_p95_s", "train_s", "train_tokens")


class ArmResult(BaseModel):
    """One arm: its scores, its cost, and each quality metric's difference against RAG only."""

    model: str = Field(description="The model directory it answered with.")
    retrieval: bool
    scores: dict[str, float | None]
    cost: dict[str, Any] = Field(description="train_s, train_tokens, tokens_per_s, reused, dataset, fingerprint; "
                                             "prompt tokens and latency are in scores.")
    vs_baseline: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                   description="metric -> delta, low, high (95 % paired bootstrap), n.")


class Winner(BaseModel):
    arm: str
    metric: str
    value: float
    runner_up: str | None = None
    margin: float | None = None
    low: float | None = None
    high: float | None = None


class Comparison(BaseModel):
    """`ragtune compare --json` prints these keys."""

    questions: int
    train_questions: int
    collection: str | None
    baseline: str
    primary_metric: str
    arms: dict[str, ArmResult]
    winner: Winner | None
    hybrid_vs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="raft minus each other arm on "
                                                 "the primary metric: delta, low, high (95 % paired bootstrap), n.")
    seconds: float


def pick_winner(records: dict[str, list[Record]], metric: str, seed: int = 0) -> Winner | None:
    """The best arm on ``metric``, its margin over the runner-up and the paired-bootstrap interval of it."""
    values = {arm: v for arm, rs in records.items() if (v := STATISTICS[metric](rs)) is not None}
    ranked = sorted(values, key=lambda a: -values[a])
    if not ranked:
        return None
    best = ranked[0]
    if len(ranked) == 1:
        return Winner(arm=best, metric=metric, value=values[best])
    diff = m.paired_bootstrap(records[best], records[ranked[1]], STATISTICS[metric], seed=seed)
    assert diff is not None
    return Winner(arm=best, metric=metric, value=values[best], runner_up=ranked[1], margin=diff.delta,
                  low=diff.low, high=diff.high)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _interval(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    mark = "" if d["low"] <= 0 <= d["high"] else " *"
    return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{mark}"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(result: Comparison) -> str:
    arms = result.arms
    quality = [k for k in (*QUALITY, "recall_at_k", "citation_validity", "supported_share")
               if any(a.scores.get(k) is not None for a in arms.values())]
    lines = [f"# RAG, fine-tuning or both: {result.questions} test questions "
             f"({result.train_questions} for training)", "", winner_line(result), "",
             "## Quality", "", *_table(["arm", *(LABELS[k] for k in quality)],
                                       [[n, *(_fmt(a.scores.get(k)) for k in quality)] for n, a in arms.items()]),
             "", "## Cost", "", *_table(["arm", *(LABELS[k] for k in COST)],
                                        [[n, *(_fmt(a.scores.get(k, a.cost.get(k))) for k in COST)]
                                         for n, a in arms.items()]),
             "", f"## Difference against {result.baseline} (95 % paired-bootstrap interval; * excludes 0)", ""]
    if result.hybrid_vs:
        lines += [f"raft against each arm on {LABELS[result.primary_metric]}: "
                  + "; ".join(f"{n} {_interval(d)}" for n, d in result.hybrid_vs.items()), ""]
    shown = [k for k in QUALITY if any(k in a.vs_baseline for a in arms.values())]
    lines += _table(["arm", *(LABELS[k] for k in shown)],
                    [[n, *(_interval(a.vs_baseline.get(k)) for k in shown)] for n, a in arms.items()
                     if n != result.baseline])
    return "\n".join(lines) + "\n"


def winner_line(result: Comparison) -> str:
    w = result.winner
    if w is None:
        return "No arm could be scored."
    if w.runner_up is None or w.margin is None:
        return f"**Winner: {w.arm}** ({LABELS[w.metric]} {w.value:.3f}; no other arm to compare)."
    sure = "the interval excludes 0" if (w.low or 0) > 0 else "the interval includes 0: not a clear win"
    return (f"**Winner: {w.arm}** ({LABELS[w.metric]} {w.value:.3f}), ahead of {w.runner_up} by {w.margin:+.3f} "
            f"(95 % interval [{w.low:+.3f}, {w.high:+.3f}]; {sure}).")


def chart_png(result: Comparison) -> bytes:
    """Quality (the primary metric) against answer latency and against training seconds, one point per arm."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100, sharey=True)
    for ax, (key, label) in zip(axes, (("latency_p50_s", "answer latency p50 (s)"),
                                       ("train_s", "training (s)")), strict=True):
        for name, arm in result.arms.items():
            x, y = arm.scores.get(key, arm.cost.get(key)) or 0.0, arm.scores.get(result.primary_metric)
            if y is not None:
                ax.scatter([x], [y], s=40)
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set(xlabel=label, title=f"{LABELS[result.primary_metric]} vs {label.split(' (')[0]}")
        ax.locator_params(axis="x", nbins=5)  # millisecond latencies otherwise print as overlapping tick labels
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(LABELS[result.primary_metric])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
