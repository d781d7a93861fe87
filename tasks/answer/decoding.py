"""Greedy decoding's loop guards for serving: a repetition penalty and no-repeat n-grams over the answer only.

A 135M model repeats itself. Both guards count the answer's tokens only, so quoting the prompt's
documents stays possible. Model evaluation decodes plainly, so its metrics measure the model itself.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Decoding:
    """Loop guards for greedy decoding; the defaults (1.0, 0) are plain greedy decoding."""

    repetition_penalty: float = 1.0  # > 1 lowers the score of tokens the answer already used
    no_repeat_ngram: int = 0  # an n-gram of this many tokens may occur once in the answer; 0 = off


def answer_processors(decoding: Decoding, prompt_tokens: int, tokenizer: Any) -> Any:
    """The loop guard for ``decoding`` as a logits-processor list (empty for plain greedy decoding).

    transformers' own ``repetition_penalty``/``no_repeat_ngram_size`` count the prompt too, so they
    would forbid copying a phrase from a retrieved document, which is what a grounded answer does.
    """
    from transformers import LogitsProcessorList

    if decoding.repetition_penalty == 1.0 and decoding.no_repeat_ngram <= 0:
        return LogitsProcessorList()
    return LogitsProcessorList([AnswerLoopGuard(decoding, prompt_tokens, exempt_tokens(tokenizer))])


class AnswerLoopGuard:
    """Repetition penalty and no-repeat n-grams over the answer's tokens only (those after the prompt).

    Digit and punctuation tokens are exempt: SmolLM2 spells numbers digit by digit, so penalising a
    used "0" turns "90 minutes" into "9 minutes" once "3000" was written; citations repeat "[" and "]".
    """

    def __init__(self, decoding: Decoding, prompt_tokens: int, exempt: frozenset[int]):
        self.penalty, self.n = decoding.repetition_penalty, decoding.no_repeat_ngram
        self.prompt_tokens, self.exempt = prompt_tokens, exempt

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for row, ids in enumerate(input_ids[:, self.prompt_tokens :].tolist()):
            used = sorted(set(ids) - self.exempt)
            if used and self.penalty != 1.0:  # as transformers does: a lower logit either way
                picked = scores[row, used]
                scores[row, used] = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
            banned = self.repeats(ids)
            if banned:
                scores[row, sorted(banned)] = -float("inf")
        return scores

    def repeats(self, ids: list[int]) -> set[int]:
        """Tokens that would complete an n-gram the answer already holds (all-exempt n-grams may repeat)."""
        n = self.n
        if n <= 0 or len(ids) < n:
            return set()
        prefix = ids[len(ids) - n + 1 :]
        found = {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix}
        if all(t in self.exempt for t in prefix):
            found -= self.exempt
        return found


@lru_cache(maxsize=4)
def exempt_tokens(tokenizer: Any) -> frozenset[int]:
    """Token ids spelling only digits, punctuation and spaces (byte-level BPE marks a space Ġ and a newline Ċ,
    SentencePiece a space ▁)."""
    allowed = set(string.digits + string.punctuation + " ")
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return frozenset(i for i, p in enumerate(pieces)
                     if p and set(p.replace("Ġ", " ").replace("Ċ", " ").replace("▁", " ")) <= allowed)
