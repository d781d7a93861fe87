"""The training data seam: dataset rows -> token ids with assistant-only labels -> packed rows -> batches.

Pure functions over plain lists (no Prefect, no accelerate), shared by the training script, the
model evaluation and the benchmark, so all three see the same tokens.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE = -100  # label value cross-entropy skips: prompt tokens, padding, example starts


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on the assistant answer and its end-of-turn token

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PackedRow:
    """Several examples laid end to end; position ids restart at 0 at each example start."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)

    def add(self, example: Example) -> None:
        self.input_ids += example.input_ids
        # the first label of an example would be predicted from the previous example's last token
        self.labels += [IGNORE, *example.labels[1:]]
        self.position_ids += range(len(example))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise DataError(f"{path}:{n}: 'messages' must be a list ending with an assistant message")
        rows.append(row)
    return rows


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Everything before the answer, exactly as the model sees it when asked to generate."""
    return str(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))


def encode_example(tokenizer: Any, messages: list[dict[str, str]]) -> Example:
    """Prompt tokens then answer tokens then end-of-turn; loss only on the answer and end-of-turn.

    The prompt is tokenized on its own, as at inference time, so no BPE merge crosses the boundary. The
    end-of-turn token is the one the chat template closes an assistant turn with (``prompting.end_of_turn_id``).
    """
    from tasks.answer.prompting import end_of_turn_id

    prompt = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]
    return Example(prompt + answer, [IGNORE] * len(prompt) + answer)


def encode_rows(tokenizer: Any, rows: list[dict[str, Any]], max_len: int) -> tuple[list[Example], int]:
    """Encoded examples that fit ``max_len``, and how many were dropped for being longer."""
    examples = [encode_example(tokenizer, row["messages"]) for row in rows]
    kept = [e for e in examples if len(e) <= max_len]
    return kept, len(examples) - len(kept)


def pack_examples(examples: list[Example], max_len: int, packing: bool = True) -> list[PackedRow]:
    """Best-fit-decreasing bin packing into rows of at most ``max_len`` tokens (deterministic)."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[PackedRow] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted: the tightest fit is found by bisect
    for i in order:
        size = len(examples[i])
        slot = bisect.bisect_left(free, (size, -1))
        if slot == len(free):
            rows.append(PackedRow())
            room, r = max_len, len(rows) - 1
        else:
            room, r = free.pop(slot)
        rows[r].add(examples[i])
        if packing and room - size > 0:
            bisect.insort(free, (room - size, r))
    return rows


def collate(rows: list[PackedRow], pad_id: int) -> dict[str, Any]:
    """Pad to the longest row; padding continues the last positions so a lone example stays 'unpacked'."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids, labels, positions = [], [], []
    for r in rows:
        pad = width - len(r.input_ids)
        last = r.position_ids[-1] + 1 if r.position_ids else 0
        ids.append(r.input_ids + [pad_id] * pad)
        labels.append(r.labels + [IGNORE] * pad)
        positions.append(r.position_ids + list(range(last, last + pad)))
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.tensor(positions),
        "useful_tokens": torch.tensor(sum(len(r.input_ids) for r in rows)),
    }


def epoch_order(n_rows: int, epochs: float, seed: int) -> list[int]:
    """Row indices for the whole run: one seeded permutation per epoch, laid end to end.

    A run's data position is then one number (micro-batches consumed), which makes resuming exact.
    """
    import torch

    order: list[int] = []
    epoch = 0
    total = int(n_rows * epochs)
    while len(order) < total:
        g = torch.Generator().manual_seed(seed + epoch)
        order += torch.randperm(n_rows, generator=g).tolist()
        epoch += 1
    return order[:total]


def seeded_sample(rows: list[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of ``limit`` rows in file order (all of them when ``limit`` is 0 or larger)."""
    import random

    if not limit or limit >= len(rows):
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), limit))
    return [r for i, r in enumerate(rows) if i in keep]
