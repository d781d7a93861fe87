"""The training sets of the trained arms, as dataset rows the training script reads, and their identity.

- closed book (``finetune``): system + question -> answer, the dataset build's curated layout;
- RAFT (``raft``, Zhang et al. 2024): the answering prompt (``tasks.answer.prompting``, so training
  and serving prompts cannot drift) holding the supporting chunk among distractors taken from the
  retriever's own top-k, the answer citing it (``According to [n]: ...``); for a share of questions the
  supporting chunk is withheld and the target is the plain answer (the model must also know it);
  unanswerable questions get their retrieved context and ``I don't know.``.

A labelled row's answer starts with its label (``yes. ...``): label scoring asks how likely each option
is as the answer's first words, so training teaches exactly that position.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.compare.qa import QARow
from tasks.dataset.grounding import fit_passages, lead_with_citation, support, training_messages
from tasks.dataset.rows import ABSTAIN_ANSWER, CURATED_SYSTEM_PROMPT, assign_splits
from tasks.types import Hit

RECIPES = ("finetune", "raft")
Records = list[dict[str, Any]]


def target_text(row: QARow) -> str:
    """What a fine-tuned model should answer without context: the label first, then the answer."""
    if not row.answerable:
        return ABSTAIN_ANSWER
    body = _body(row)
    return (f"{row.label}. {body}" if body else row.label) if row.label else body


def cited_target(row: QARow, n: int) -> str:
    """The RAFT target when document ``n`` supports the answer."""
    body = _body(row)
    cited = lead_with_citation(body, n) if body else f"According to [{n}]."
    return f"{row.label}. {cited}" if row.label else cited


def _body(row: QARow) -> str:
    """The answer, empty when it only repeats the label ("yes" for label yes): the label already says it."""
    answer = row.answers[0]
    return "" if row.label and answer.strip(" .").casefold() == row.label.casefold() else answer


def closed_book_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": CURATED_SYSTEM_PROMPT}, {"role": "user", "content": question}]


def record(row: QARow, messages: list[dict[str, str]], kind: str) -> dict[str, Any]:
    """A line of train.jsonl / eval.jsonl (``tasks.dataset.rows.DatasetRow.record``'s keys)."""
    return {"id": row.id, "messages": messages, "group": row.group, "kind": kind, "n_tokens": 0,
            "reference": messages[-1]["content"]}


def closed_book_rows(rows: Sequence[QARow]) -> list[dict[str, Any]]:
    return [record(r, [*closed_book_messages(r.question), {"role": "assistant", "content": target_text(r)}],
                   "curated" if r.answerable else "abstain") for r in rows]


def from_source(hit: Hit, source: str) -> bool:
    """The chunk comes from the document ``source`` names (a path relative to the corpus, a URI, or a stem)."""
    where = [str(hit.metadata.get("path") or ""), str(hit.metadata.get("uri") or "")]
    source = source.strip().lstrip("./")
    return any(w == source or w.endswith("/" + source) or (
        "." not in Path(source).name and Path(w).stem == Path(source).name) for w in where if w)


def oracle_chunk(row: QARow, hits: Sequence[Hit], threshold: float) -> Hit | None:
    """The chunk that supports the answer: from the row's source when it names one, else the retrieved chunk
    holding most of the answer's words (at least ``threshold`` of them)."""
    answer = row.answers[0] if row.answers else ""
    if row.source:
        candidates = [h for h in hits if from_source(h, row.source)]
        return max(candidates, key=lambda h: support(answer, h.text), default=None)
    best = max(hits, key=lambda h: support(answer, h.text), default=None)
    return best if best is not None and support(answer, best.text) >= threshold else None


def raft_rows(tokenizer: Any, rows: Sequence[QARow], retrieved: dict[str, list[Hit]], k: int,
              withhold_share: float, threshold: float, max_seq_len: int, seed: int) -> list[dict[str, Any]]:
    """One RAFT example per training question (``retrieved``: the retriever's hits, deeper than ``k``)."""
    out = []
    for row in rows:
        hits = retrieved.get(row.id, [])
        oracle = oracle_chunk(row, hits, threshold) if row.answerable else None
        distractors = [h for h in hits if oracle is None or h.doc_id != oracle.doc_id]
        if not row.answerable:
            out.append(_example(tokenizer, row, hits[:k], ABSTAIN_ANSWER, "abstain", max_seq_len))
        elif oracle is None or _coin(seed, row.id) < withhold_share:
            out.append(_example(tokenizer, row, distractors[:k], target_text(row), "withheld", max_seq_len))
        else:
            out.append(_with_oracle(tokenizer, row, oracle, distractors[: k - 1], seed, max_seq_len))
    return out


def _with_oracle(tokenizer: Any, row: QARow, oracle: Hit, distractors: list[Hit], seed: int,
                 max_seq_len: int) -> dict[str, Any]:
    """The supporting chunk at a seeded position among the distractors; first when the budget would drop it."""
    at = int(_coin(seed, f"{row.id}:position") * (len(distractors) + 1))
    passages = [*distractors[:at], oracle, *distractors[at:]]
    fitted = fit_passages(tokenizer, row.question, passages, cited_target(row, 0), max_seq_len)
    if oracle not in fitted:
        fitted = fit_passages(tokenizer, row.question, [oracle, *distractors], cited_target(row, 0), max_seq_len)
    n = fitted.index(oracle) + 1 if oracle in fitted else 0
    target = cited_target(row, n) if n else target_text(row)
    return record(row, training_messages(row.question, fitted, target, list(tokenizer.all_special_tokens)),
                  "grounded" if n else "withheld")


def _example(tokenizer: Any, row: QARow, passages: list[Hit], target: str, kind: str,
             max_seq_len: int) -> dict[str, Any]:
    fitted = fit_passages(tokenizer, row.question, passages, target, max_seq_len)
    return record(row, training_messages(row.question, fitted, target, list(tokenizer.all_special_tokens)), kind)


def _coin(seed: int, key: str) -> float:
    """A seeded uniform number in [0, 1) per key: the same rows are withheld on every run."""
    return int(hashlib.sha256(f"{seed}\x1f{key}".encode()).hexdigest()[:12], 16) / 16**12


def holdout(records: Records, share: float, seed: int) -> tuple[Records, Records]:
    """(train, eval) by group, for the training script's eval loss and best checkpoint; never the test questions."""
    splits = assign_splits((r["group"] for r in records), share, seed)
    train = [r for r in records if splits[r["group"]] == "train"]
    held = [r for r in records if splits[r["group"]] == "eval"]
    return (train, held) if train and held else (records, records[:1])


def write_dataset(root: Path, train: Records, held: Records) -> tuple[str, Path]:
    """train.jsonl + eval.jsonl under ``root/<sha256 of both>``: the version is the content."""
    files = {name: "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
             for name, rows in (("train.jsonl", train), ("eval.jsonl", held))}
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    version = digest.hexdigest()
    path = root / version
    if not (path / "eval.jsonl").is_file():
        path.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (path / f"{name}.tmp").write_bytes(data)
            (path / f"{name}.tmp").replace(path / name)
    return version, path


def count_tokens(tokenizer: Any, records: Records) -> int:
    """Chat-rendered tokens of every example: what one epoch trains on."""
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def fingerprint(version: str, base_model: Path, training: dict[str, Any]) -> str:
    """What a trained arm's checkpoint depends on: dataset version, base weights, every training setting."""
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(base_model).glob("*.safetensors"))
    key = {"dataset": version, "base": str(Path(base_model).resolve()), "weights": weights, "training": training}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
