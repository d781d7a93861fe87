"""Ask: question -> retrieval -> prompt -> streamed answer with citations, timings and what served it.

Plain functions, no Prefect run per question: a task run's bookkeeping would cost more than the
search. Everything that can fail on bad input (question, collection, Milvus, model) fails in
``ask`` before the first token, so the API can still answer with a proper status code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.answer.citations import Citation, cite
from tasks.answer.decoding import Decoding
from tasks.answer.generation import GenerationStats, Generator, load_generator, stream_answer
from tasks.answer.prompting import Prompt, build_prompt
from tasks.answer.retrieval import Retrieval, retrieve
from tasks.answer.serving import Serving, resolve_serving
from tasks.settings import AnswerSettings, Settings


class QuestionError(ValueError):
    """The question itself is unusable (empty, too long)."""


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    sources: list[dict[str, Any]]
    collection: str
    model: str
    release_id: str | None
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    new_tokens: int = 0
    context_truncated: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_question(question: str, settings: Settings) -> str:
    question = (question or "").strip()
    if not question:
        raise QuestionError("the question is empty")
    limit = settings.answer.max_question_chars
    if len(question) > limit:
        raise QuestionError(f"the question has {len(question)} characters; the limit is {limit}")
    return question


class AnswerStream:
    """Iterate for the answer's text pieces; ``answer`` is complete once the iteration ends."""

    def __init__(self, question: str, serving: Serving, gen: Generator, found: Retrieval, prompt: Prompt,
                 max_new_tokens: int, decoding: Decoding | None = None, fast_prefill: bool = True):
        self.question, self.serving, self.gen, self.found, self.prompt = question, serving, gen, found, prompt
        self.max_new_tokens, self.decoding, self.fast_prefill = max_new_tokens, decoding, fast_prefill
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        stats = GenerationStats()
        pieces: list[str] = []
        for piece in stream_answer(self.gen, self.prompt, self.max_new_tokens, stats, self.decoding,
                                   self.fast_prefill):
            pieces.append(piece)
            yield piece
        self.answer = self._finish("".join(pieces).strip(), stats)

    def complete(self) -> Answer:
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer

    def _finish(self, text: str, stats: GenerationStats) -> Answer:
        timings = {**self.found.timings, "generate_s": stats.total_s, "first_token_s": stats.first_token_s or 0.0}
        sources = [{"n": n, "uri": h.uri, "section": h.metadata.get("section") or "", "page": h.metadata.get("page"),
                    "score": h.score, "chunk_id": h.id} for n, h in enumerate(self.prompt.sources, start=1)]
        return Answer(self.question, text, cite(text, self.prompt.sources), sources, self.found.collection,
                      self.serving.model_name, self.serving.release_id, self.found.mode,
                      {k: round(v, 4) for k, v in timings.items()}, stats.prompt_tokens, stats.new_tokens,
                      self.prompt.truncated, "; ".join(n for n in (self.found.note, self.serving.note) if n))


def serving_generator(serving: Serving, answer: AnswerSettings) -> Generator:
    """The generator ``serving`` names, loaded once per process; ragtune's prompt pass per ``answer.fast_prefill``."""
    return load_generator(str(serving.model_path), serving.model_name, answer.fast_prefill)


def ask(settings: Settings, question: str, k: int | None = None, mode: str | None = None,
        max_new_tokens: int | None = None, index: Any = None) -> AnswerStream:
    """Retrieve and build the prompt now (errors surface here); generation happens while iterating."""
    from tasks.runtime.cpu import configure_torch

    question = validate_question(question, settings)
    serving = resolve_serving(settings)
    found = retrieve(settings, serving.collection, question, k or settings.answer.k, mode or settings.answer.mode,
                     index)
    configure_torch(settings.models.torch_threads)
    t0 = time.perf_counter()
    gen = serving_generator(serving, settings.answer)
    found.timings["load_s"] = time.perf_counter() - t0
    new_tokens = max_new_tokens or settings.answer.max_new_tokens
    budget = min(settings.answer.prompt_tokens, gen.context_tokens - new_tokens)
    prompt = build_prompt(gen.tokenizer, question, found.hits, budget)
    decoding = Decoding(settings.answer.repetition_penalty, settings.answer.no_repeat_ngram)
    return AnswerStream(question, serving, gen, found, prompt, new_tokens, decoding, settings.answer.fast_prefill)
