"""From curated examples to chat rows: de-duplicate, split by source group, render, count tokens.

Every step is deterministic (content ids, seeded hashes, stable orders), so the same inputs always
give the same rows, files and version id. Rows follow the training format the fine-tuning side reads:
``{"id", "messages", "group", "kind", "n_tokens", "reference"}`` with the assistant answer last.
"""

from __future__ import annotations

import hashlib
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.dataset.examples import CuratedExample

CURATED_SYSTEM_PROMPT = "You are a helpful assistant. Answer the question accurately and concisely."
ABSTAIN_ANSWER = "I don't know."  # what prompting.SYSTEM_PROMPT tells the model to say without an answer
KINDS = ("curated", "grounded", "abstain")
SPLITS = ("train", "eval")
_SHINGLE = 5
_BANDS, _ROWS = 16, 4  # 64 MinHash values; pairs with Jaccard >= ~0.5 become candidates
_NON_WORD = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")


@dataclass
class DatasetRow:
    id: str
    question: str | None
    response: str | None
    group: str | None
    label: str | None
    kind: str
    split: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    n_tokens: int = 0

    def record(self) -> dict[str, Any]:
        """The line written to train.jsonl / eval.jsonl."""
        return {"id": self.id, "messages": self.messages, "group": self.group, "kind": self.kind,
                "n_tokens": self.n_tokens, "reference": self.response}


@dataclass
class Dedup:
    kept: list[CuratedExample]
    exact: list[tuple[str, str]]  # (removed id, kept id it duplicates)
    near: list[tuple[str, str]]


def normalize_prompt(text: str) -> str:
    """Case, punctuation, spacing and numbers ignored: "Cancel order 123!" == "cancel order 456"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", _DIGITS.sub("0", text)).split())


def shingles(normalized: str) -> set[str]:
    padded = f" {normalized} "
    return {padded[i:i + _SHINGLE] for i in range(max(1, len(padded) - _SHINGLE + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _minhash_params() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240607)  # fixed: signatures must not change between runs
    a = rng.integers(1, 2**63, _BANDS * _ROWS, dtype=np.uint64) | np.uint64(1)
    return a, rng.integers(0, 2**63, _BANDS * _ROWS, dtype=np.uint64)


_A, _B = _minhash_params()


def minhash_bands(grams: set[str]) -> list[bytes]:
    """LSH band keys: multiply-shift hashing of each 5-gram (wrap-around uint64 arithmetic is intended)."""
    hashes = np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
                       for g in sorted(grams)], dtype=np.uint64)
    signature = ((hashes[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)).min(axis=0)
    return [bytes([b]) + signature[b * _ROWS:(b + 1) * _ROWS].tobytes() for b in range(_BANDS)]


def deduplicate(examples: Sequence[CuratedExample], threshold: float) -> Dedup:
    """Drop exact (normalized) and near-duplicate prompts, keeping the first occurrence of each.

    Rows without a prompt pass through untouched: the gate reports them instead.
    """
    kept: list[CuratedExample] = []
    exact: list[tuple[str, str]] = []
    near: list[tuple[str, str]] = []
    by_key: dict[str, str] = {}
    buckets: dict[bytes, list[tuple[str, set[str]]]] = {}
    for ex in examples:
        if ex.prompt is None:
            kept.append(ex)
            continue
        key = normalize_prompt(ex.prompt)
        if key in by_key:
            exact.append((ex.id, by_key[key]))
            continue
        grams = shingles(key)
        bands = minhash_bands(grams)
        match = next((kid for band in bands for kid, kgrams in buckets.get(band, ())
                      if jaccard(grams, kgrams) >= threshold), None)
        if match is not None:
            near.append((ex.id, match))
            continue
        by_key[key] = ex.id
        for band in bands:
            buckets.setdefault(band, []).append((ex.id, grams))
        kept.append(ex)
    return Dedup(kept, exact, near)


def assign_splits(groups: Iterable[str | None], eval_share: float, seed: int) -> dict[str | None, str]:
    """Whole groups to eval, in an order fixed by the seed, until eval holds about ``eval_share`` of rows."""
    sizes = Counter(groups)
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}\x1f{g}".encode()).hexdigest())
    target, in_eval = eval_share * sum(sizes.values()), 0
    splits: dict[str | None, str] = {}
    for group in order:
        closer = in_eval + sizes[group] / 2 < target  # taking it lands nearer the target than skipping it
        splits[group] = "eval" if closer else "train"
        in_eval += sizes[group] if closer else 0
    return splits


def curated_rows(examples: Sequence[CuratedExample], splits: dict[str | None, str],
                 render_context: Any = None) -> list[DatasetRow]:
    """Chat rows for curated examples; those with their own context use the answering prompt's layout."""
    rows = []
    for ex in examples:
        if ex.context and render_context is not None:
            messages = render_context(ex.prompt or "", list(ex.context), ex.response or "")
        else:
            messages = [{"role": "system", "content": CURATED_SYSTEM_PROMPT},
                        {"role": "user", "content": ex.prompt or ""},
                        {"role": "assistant", "content": ex.response or ""}]
        rows.append(DatasetRow(ex.id, ex.prompt, ex.response, ex.group, ex.label, "curated",
                               splits[ex.group], messages))
    return rows


def set_token_counts(tokenizer: Any, rows: Sequence[DatasetRow]) -> None:
    """Set ``n_tokens``: the whole conversation rendered with the model's chat template, tokenized."""
    if not rows:
        return
    texts = [tokenizer.apply_chat_template(r.messages, tokenize=False) for r in rows]
    for row, ids in zip(rows, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True):
        row.n_tokens = len(ids)


def load_generator_tokenizer(cache_dir: Any, override: str = "") -> Any:
    """The generator's tokenizer with the chat template training and serving render with (the fallback where
    the model has none)."""
    from tasks.answer.prompting import load_tokenizer
    from tasks.runtime.sources import generator_source

    return load_tokenizer(generator_source(cache_dir, override).path)


def gate_frame(rows: Sequence[DatasetRow]) -> Any:
    """The table the gate validates: one line per row, with the user turn normalized for duplicate checks."""
    import pandas as pd

    return pd.DataFrame({
        "id": [r.id for r in rows],
        "question": [r.question for r in rows],
        "prompt_key": [_user_key(r) for r in rows],
        "response": [r.response for r in rows],
        "group": [r.group for r in rows],
        "label": [r.label for r in rows],
        "kind": [r.kind for r in rows],
        "split": [r.split or None for r in rows],
        "n_tokens": [r.n_tokens for r in rows],
    })


def _user_key(row: DatasetRow) -> str | None:
    users = [m["content"] for m in row.messages if m["role"] == "user"]
    return normalize_prompt(users[-1]) if users and row.question is not None else None


def token_stats(rows: Sequence[DatasetRow]) -> dict[str, float]:
    counts = sorted(r.n_tokens for r in rows)
    if not counts:
        return {"rows": 0, "total": 0}
    p95 = counts[min(len(counts) - 1, int(0.95 * len(counts)))]
    return {"rows": len(counts), "total": sum(counts), "min": counts[0], "mean": round(statistics.fmean(counts), 1),
            "p50": statistics.median_low(counts), "p95": p95, "max": counts[-1]}


def label_distribution(rows: Sequence[DatasetRow]) -> dict[str, float]:
    counts = Counter(r.label or "" for r in rows)
    total = sum(counts.values())
    return {label: round(n / total, 6) for label, n in sorted(counts.items())}


def counts(rows: Sequence[DatasetRow]) -> dict[str, Any]:
    split_rows = {s: [r for r in rows if r.split == s] for s in SPLITS}
    return {**{s: len(v) for s, v in split_rows.items()},
            "by_kind": {s: dict(sorted(Counter(r.kind for r in v).items())) for s, v in split_rows.items()},
            "groups": {s: len({r.group for r in v}) for s, v in split_rows.items()}}
