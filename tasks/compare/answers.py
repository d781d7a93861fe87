"""One arm answering the test questions: the same prompts, the same greedy decoding, timed per question.

Closed-book arms see the dataset build's curated layout (system + question); retrieval arms see the
serving prompt (``tasks.answer.prompting.build_prompt``: numbered chunks fitted to the budget). Every
arm decodes greedily with the same budget and no serving loop guards, as the model evaluation does
(``tasks.training.scoring``). A labelled question is also scored by the likelihood of each option as
the answer's first words, so the label needs no parsing of free text (as evaluation harnesses do).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.compare.qa import QARow
from tasks.types import Hit


@dataclass(frozen=True)
class Context:
    """What the retriever returned for one test question, shared by every retrieval arm."""

    hits: list[Hit]
    seconds: float


@dataclass
class Reply:
    """One arm's answer to one question, before scoring."""

    text: str
    prompt_tokens: int
    seconds: float  # retrieval (retrieval arms) + prompt building + generation
    sources: list[Hit] = field(default_factory=list)  # the prompt's documents: [n] is sources[n - 1]
    option_logprobs: dict[str, float] = field(default_factory=dict)


def closed_book_prompt(tokenizer: Any, question: str) -> str:
    from tasks.compare.recipes import closed_book_messages

    return str(tokenizer.apply_chat_template(closed_book_messages(question), tokenize=False,
                                             add_generation_prompt=True))


def answer_all(model_path: Path, rows: Sequence[QARow], contexts: dict[str, Context] | None, options: list[str],
               max_new_tokens: int, prompt_budget: int) -> list[Reply]:
    """Every row answered by the model at ``model_path``; ``contexts`` None = closed book."""
    from tasks.training.scoring import load_model

    model, tokenizer = load_model(model_path)
    budget = min(prompt_budget, int(model.config.max_position_embeddings) - max_new_tokens)
    return [answer_one(model, tokenizer, row, contexts[row.id] if contexts is not None else None, options,
                       max_new_tokens, budget) for row in rows]


def answer_one(model: Any, tokenizer: Any, row: QARow, context: Context | None, options: list[str],
               max_new_tokens: int, budget: int) -> Reply:
    from tasks.answer.prompting import build_prompt

    started = time.perf_counter()
    if context is None:
        text, sources = closed_book_prompt(tokenizer, row.question), []
    else:
        prompt = build_prompt(tokenizer, row.question, context.hits, budget)
        text, sources = prompt.text, prompt.sources
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer, first = greedy(model, tokenizer, ids, max_new_tokens)
    seconds = time.perf_counter() - started + (context.seconds if context else 0.0)
    logprobs = option_logprobs(model, tokenizer, ids, options, first) if row.label is not None and options else {}
    return Reply(answer, len(ids), seconds, list(sources), logprobs)


def greedy(model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int) -> tuple[str, Any]:
    """The greedy answer, and the log-probabilities of its first token (the prompt's last position)."""
    import torch

    from tasks.answer.prompting import stop_token_ids

    inputs = torch.tensor([ids], device=model.device)
    stops = stop_token_ids(tokenizer, model.generation_config)  # the end of the assistant turn, as scoring stops
    with torch.inference_mode():
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=stops, pad_token_id=stops[0])
    text = str(tokenizer.decode(out.sequences[0, len(ids):], skip_special_tokens=True)).strip()
    return text, out.logits[0][0].float().log_softmax(-1)


def option_logprobs(model: Any, tokenizer: Any, ids: list[int], options: list[str],
                    first: Any = None) -> dict[str, float]:
    """log P(option | prompt), summed over the option's tokens. Options of one token each are read from the
    answer's first-token distribution (``first``: no extra pass); longer ones take one right-padded batch."""
    import torch

    encoded = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    if first is not None and all(len(e) == 1 for e in encoded):
        return {option: float(first[e[0]]) for option, e in zip(options, encoded, strict=True)}
    width = len(ids) + max(len(e) for e in encoded)
    pad = tokenizer.eos_token_id
    batch = torch.tensor([ids + e + [pad] * (width - len(ids) - len(e)) for e in encoded], device=model.device)
    mask = torch.tensor([[1] * (len(ids) + len(e)) + [0] * (width - len(ids) - len(e)) for e in encoded],
                        device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=batch, attention_mask=mask).logits.float().log_softmax(-1)
    scores = {}
    for row, (option, e) in enumerate(zip(options, encoded, strict=True)):
        positions = range(len(ids) - 1, len(ids) - 1 + len(e))  # the logit at t predicts token t + 1
        scores[option] = float(sum(logits[row, p, tok] for p, tok in zip(positions, e, strict=True)))
    return scores
