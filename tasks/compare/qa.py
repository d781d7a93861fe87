"""The QA file of `ragtune compare`: one JSON object a line, validated row by row, split by source group.

Fields: ``question``; ``answer`` (a string) or ``answers`` (a list of strings), required unless the row
is ``answerable: false`` (the right answer is to abstain); optional ``label`` (one of a closed set such
as yes/no/maybe), ``source`` (the document that supports the answer), ``split`` (train or test; eval is
read as test) and ``id``. Every error names the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLIT_NAMES = {"train": "train", "test": "test", "eval": "test"}


class QAFileError(ValueError):
    """The QA file is empty or a row is malformed; the message names the file and line."""


@dataclass(frozen=True)
class QARow:
    id: str
    question: str
    answers: tuple[str, ...]  # empty only for an unanswerable row
    answerable: bool = True
    label: str | None = None
    source: str | None = None
    split: str | None = None

    @property
    def group(self) -> str:
        """What the split keeps together: the supporting document, else the row itself."""
        return self.source or f"row:{self.id}"


def load_qa(path: Path, labels: Sequence[str] | None = None) -> list[QARow]:
    """Every row of ``path``; ``labels`` is the closed label set (None: the labels the file uses)."""
    if not path.is_file():
        raise FileNotFoundError(f"QA file {path} does not exist")
    rows: list[QARow] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            rows.append(parse_row(_json(line, path, n), f"{path}:{n}", n))
    if not rows:
        raise QAFileError(f"{path}: no QA rows (the file is empty)")
    check_labels(rows, labels, path)
    check_unique_ids(rows, path)
    return rows


def _json(line: str, path: Path, n: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise QAFileError(f"{path}:{n}: not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise QAFileError(f"{path}:{n}: a row must be a JSON object, not {type(value).__name__}")
    return value


def parse_row(raw: dict[str, Any], where: str, n: int) -> QARow:
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise QAFileError(f"{where}: missing 'question' (a non-empty string)")
    answerable = raw.get("answerable", True)
    if not isinstance(answerable, bool):
        raise QAFileError(f"{where}: 'answerable' must be true or false, not {answerable!r}")
    answers = _answers(raw, where)
    if answerable and not answers:
        raise QAFileError(f"{where}: missing 'answer' or 'answers' (required unless \"answerable\": false)")
    return QARow(str(raw.get("id") or f"row-{n}"), question.strip(), answers, answerable,
                 _optional(raw, "label", where), _optional(raw, "source", where), _split(raw, where))


def _answers(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("answers", raw.get("answer"))
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise QAFileError(f"{where}: 'answer' must be a string and 'answers' a list of strings")
    return tuple(v.strip() for v in values if v.strip())


def _optional(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise QAFileError(f"{where}: '{key}' must be a non-empty string, not {value!r}")
    return value.strip()


def _split(raw: dict[str, Any], where: str) -> str | None:
    value = raw.get("split")
    if value is None:
        return None
    if value not in SPLIT_NAMES:
        raise QAFileError(f"{where}: 'split' must be train or test, not {value!r}")
    return SPLIT_NAMES[value]


def check_labels(rows: Sequence[QARow], labels: Sequence[str] | None, path: Path) -> None:
    if labels is None:
        return
    for n, row in enumerate(rows, start=1):
        if row.label is not None and row.label not in labels:
            raise QAFileError(f"{path}: row {n} (id {row.id}): unknown label {row.label!r}; "
                              f"expected one of {', '.join(labels)}")


def check_unique_ids(rows: Sequence[QARow], path: Path) -> None:
    seen: set[str] = set()
    for n, row in enumerate(rows, start=1):
        if row.id in seen:
            raise QAFileError(f"{path}: row {n}: id {row.id!r} appears twice")
        seen.add(row.id)


def label_set(rows: Sequence[QARow]) -> list[str]:
    """The options label scoring chooses among, in first-seen order."""
    return list(dict.fromkeys(r.label for r in rows if r.label is not None))


def split_rows(rows: Sequence[QARow], test_share: float, seed: int) -> tuple[list[QARow], list[QARow]]:
    """(train, test): the file's own split where it gives one, else whole source groups to test
    (``tasks.dataset.rows.assign_splits``, as the dataset build splits): no source in both."""
    from tasks.dataset.rows import assign_splits

    if any(r.split for r in rows):
        if not all(r.split for r in rows):
            missing = next(r.id for r in rows if not r.split)
            raise QAFileError(f"row {missing!r} has no 'split' while others do: give every row one, or none")
        return [r for r in rows if r.split == "train"], [r for r in rows if r.split == "test"]
    splits = assign_splits((r.group for r in rows), test_share, seed)
    return ([r for r in rows if splits[r.group] == "train"], [r for r in rows if splits[r.group] == "eval"])
