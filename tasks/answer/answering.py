"""Ask: question -> retrieval -> prompt -> streamed answer with citations, timings and what served it.

Plain functions, no Prefect run per question: a task run's bookkeeping would cost more than the
search. Everything that can fail on bad input (question, collection, Milvus, model) fails in
``ask`` before the first token, so the API can still answer with a proper status code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tasks.answer.citations import Citation, cite
from tasks.answer.decoding import Decoding
from tasks.answer.generation import GenerationStats, Generator, load_generator, stream_answer
from tasks.answer.prompting import Prompt, PromptTooLongError, build_prompt, common_length, shared_prefix_ids
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
    engine: str = "transformers"  # what generated the text: the in-process model, or "openai" (an engine server)

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

    def __init__(self, question: str, serving: Serving, found: Retrieval, prompt: Prompt,
                 generate: Callable[[GenerationStats], Iterator[str]]):
        self.question, self.serving, self.found, self.prompt, self.generate = question, serving, found, prompt, generate
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        stats = GenerationStats()
        pieces: list[str] = []
        for piece in self.generate(stats):
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
                      self.prompt.truncated, "; ".join(n for n in (self.found.note, self.serving.note) if n),
                      self.serving.engine)


def serving_generator(serving: Serving, answer: AnswerSettings) -> Generator:
    """The generator ``serving`` names, loaded once per process; ragtune's prompt pass per ``answer.fast_prefill``."""
    return load_generator(str(serving.model_path), serving.model_name, answer.fast_prefill)


def ask(settings: Settings, question: str, k: int | None = None, mode: str | None = None,
        max_new_tokens: int | None = None, index: Any = None) -> AnswerStream:
    """Retrieve, build the prompt and (on an engine) send it now: errors surface here; tokens while iterating."""
    question = validate_question(question, settings)
    serving = resolve_serving(settings)
    found = retrieve(settings, serving.collection, question, k or settings.answer.k, mode or settings.answer.mode,
                     index)
    new_tokens = max_new_tokens or settings.answer.max_new_tokens
    if serving.engine == "openai":
        return _on_engine(settings, question, serving, found, new_tokens)
    from tasks.runtime.cpu import configure_torch

    configure_torch(settings.models.torch_threads)
    t0 = time.perf_counter()
    gen = serving_generator(serving, settings.answer)
    found.timings["load_s"] = time.perf_counter() - t0
    budget = min(settings.answer.prompt_tokens, gen.context_tokens - new_tokens)
    prompt = build_prompt(gen.tokenizer, question, found.hits, budget)
    decoding = Decoding(settings.answer.repetition_penalty, settings.answer.no_repeat_ngram)
    return AnswerStream(question, serving, found, prompt, lambda stats: stream_answer(
        gen, prompt, new_tokens, stats, decoding, settings.answer.fast_prefill))


def _on_engine(settings: Settings, question: str, serving: Serving, found: Retrieval, new_tokens: int
               ) -> AnswerStream:
    """The same prompt, measured with the served model's tokenizer, answered by the OpenAI-compatible engine."""
    from tasks.answer import engine

    t0 = time.perf_counter()
    tokenizer = engine.engine_tokenizer(settings.engine.tokenizer or str(serving.model_path))
    client = engine.engine_client(settings.engine)
    model = engine.engine_model(client, serving.engine_model)
    found.timings["load_s"] = time.perf_counter() - t0
    prompt = build_prompt(tokenizer, question, found.hits, settings.answer.prompt_tokens)
    chat = engine.open_chat(client, model, engine.prompt_messages(tokenizer, prompt), new_tokens, prompt.n_tokens)
    return AnswerStream(question, replace(serving, model_name=model, engine_model=model), found, prompt, chat.pieces)


def chat(settings: Settings, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> AnswerStream:
    """A plain chat completion by the model serving in process, no retrieval: what an inference engine does
    (another ragtune's engine path sends its own budgeted prompt here). Same decoding and loop guards."""
    serving = resolve_serving(settings)
    if serving.engine != "transformers":
        raise QuestionError("this server answers through an engine; only retrieval-augmented answers are served")
    gen = serving_generator(serving, settings.answer)
    new_tokens = max_new_tokens or settings.answer.max_new_tokens
    text = str(gen.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) + new_tokens > gen.context_tokens:
        raise PromptTooLongError(f"the messages take {len(ids)} tokens and the answer {new_tokens}: over the "
                                 f"model's {gen.context_tokens}")
    prompt = Prompt(text, ids, [], False, common_length(ids, shared_prefix_ids(gen.tokenizer)))
    decoding = Decoding(settings.answer.repetition_penalty, settings.answer.no_repeat_ngram)
    found = Retrieval([], serving.collection, "none")
    return AnswerStream("", serving, found, prompt, lambda stats: stream_answer(
        gen, prompt, new_tokens, stats, decoding, settings.answer.fast_prefill))
