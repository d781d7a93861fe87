"""The generator: loaded once per process, greedy decoding, streamed token by token, citations mapped back.

Serving guards greedy decoding against loops (a 135M model repeats itself): a repetition penalty and a
no-repeat n-gram rule, both counted over the answer only, so quoting the prompt's documents stays
possible. Model evaluation decodes plainly (tasks/model_eval), so its metrics measure the model itself.

Generation (the prompt pass, then decoding) runs on the process's answering thread
(``tasks.runtime.torch_thread.on_torch_thread``, which also encodes questions and loads models) feeding a
``TextIteratorStreamer``, so the CLI and the API can show tokens as they come; a failure there is
re-raised in the caller, never a hung stream, and a caller that stops reading stops the decoding.

The prompt's forward pass (time to first token) goes through tasks/prefill when the model is one it
reproduces (SmolLM2 and other plain Llama models on a CPU): the first token comes from its logits and
``generate()`` continues from its cache. ``fast_prefill=False`` keeps transformers' own prefill.
"""

from __future__ import annotations

import re
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tasks.runtime  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from tasks.answer.prompting import Prompt, shared_prefix_ids
from tasks.runtime.torch_thread import in_torch_thread, on_torch_thread, torch_pool
from tasks.types import Hit

if TYPE_CHECKING:
    from tasks.answer.prefill import FastPrefill

_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_STOP = frozenset({"the", "and", "for", "are", "was", "were", "with", "that", "this", "from", "you", "your",
                   "can", "has", "have", "not", "but", "all", "any", "its"})


@dataclass
class Generator:
    model: Any
    tokenizer: Any
    name: str
    path: Path
    prefill: FastPrefill | None = None  # the lean prompt pass, where the model is one it reproduces
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generate at a time per model

    @property
    def context_tokens(self) -> int:
        return int(self.model.config.max_position_embeddings)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0


@dataclass(frozen=True)
class Decoding:
    """Loop guards for greedy decoding; the defaults (1.0, 0) are plain greedy decoding."""

    repetition_penalty: float = 1.0  # > 1 lowers the score of tokens the answer already used
    no_repeat_ngram: int = 0  # an n-gram of this many tokens may occur once in the answer; 0 = off


@dataclass(frozen=True)
class Citation:
    n: int
    uri: str
    section: str
    page: int
    score: float
    chunk_id: str
    how: str  # "model": the answer wrote [n]; "overlap": an answer sentence is mostly words of chunk n


@lru_cache(maxsize=2)
def load_generator(path: str, name: str) -> Generator:
    """Load a causal LM directory once per process (a second call with the same path is free).

    Loaded on the answering thread (``tasks.runtime.torch_thread``): the load runs the shared prefix's pass.
    """
    return on_torch_thread(_load_generator, path, name)


def _load_generator(path: str, name: str) -> Generator:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.answer.prefill import FastPrefill

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    prefill = FastPrefill.for_model(model)
    if prefill is not None:
        prefill.remember(shared_prefix_ids(tokenizer))
    return Generator(model, tokenizer, name, Path(path), prefill)


def stream_answer(
    gen: Generator, prompt: Prompt, max_new_tokens: int, stats: GenerationStats | None = None,
    decoding: Decoding | None = None, fast_prefill: bool = True,
) -> Iterator[str]:
    """Yield the answer's text pieces as they are generated (greedy decoding, loop guards per ``decoding``)."""
    import torch

    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = prompt.n_tokens
    streamer = _timed_streamer(gen.tokenizer)
    ids = torch.tensor([prompt.input_ids])
    kwargs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new_tokens,
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
        "streamer": streamer, "pad_token_id": gen.tokenizer.eos_token_id,
        "logits_processor": answer_processors(decoding or Decoding(), prompt.n_tokens, gen.tokenizer),
    }
    errors: list[BaseException] = []
    stop = threading.Event()
    kwargs["stopping_criteria"] = _stopping_when(stop)
    start = time.perf_counter()
    with gen.lock:
        if in_torch_thread():  # already there (a job that answers): the whole answer first, then its pieces
            _answer(gen, prompt, kwargs, streamer, errors, fast_prefill)
            yield from until_prompt_markup(streamer)
        else:
            job = torch_pool().submit(_answer, gen, prompt, kwargs, streamer, errors, fast_prefill)
            try:
                yield from until_prompt_markup(streamer)
            finally:  # the answer ended at markup, or the caller stopped reading (a client gone): stop decoding
                stop.set()
                job.result()
    stats.total_s = time.perf_counter() - start
    stats.new_tokens = streamer.new_tokens
    if streamer.first_token_at is not None:
        stats.first_token_s = streamer.first_token_at - start
    if errors:
        raise RuntimeError(f"generation failed: {errors[0]}") from errors[0]


_MARKUP = re.compile(r"<\s*/?\s*(?:document|question)\b", re.IGNORECASE)
_MAY_OPEN = re.compile(r"<\s*/?\s*([a-z]*)", re.IGNORECASE)


def until_prompt_markup(pieces: Iterator[str]) -> Iterator[str]:
    """The answer's pieces up to where the model starts writing the prompt's own markup.

    Having answered, a small model often goes on to invent further ``<document>`` blocks and
    ``<question>``s in the prompt's format: they are never part of the answer, and an invented document
    reads like a source. Text that may be the start of such a tag is held back until it is clear either way.
    """
    held = ""
    for piece in pieces:
        text, held = held + piece, ""
        if found := _MARKUP.search(text):
            if text[: found.start()]:
                yield text[: found.start()]
            return
        cut = text.rfind("<")
        opening = _MAY_OPEN.fullmatch(text, cut) if cut >= 0 else None
        if opening and any(tag.startswith(opening.group(1).lower()) for tag in ("document", "question")):
            text, held = text[:cut], text[cut:]
        if text:
            yield text
    if held:
        yield held


def generate_answer(gen: Generator, prompt: Prompt, max_new_tokens: int, stats: GenerationStats | None = None,
                    decoding: Decoding | None = None, fast_prefill: bool = True) -> str:
    return "".join(stream_answer(gen, prompt, max_new_tokens, stats, decoding, fast_prefill))


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
    """Token ids spelling only digits, punctuation and spaces (SmolLM2's byte-level BPE marks a space Ġ)."""
    allowed = set(string.digits + string.punctuation + " ")
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return frozenset(i for i, p in enumerate(pieces)
                     if p and set(p.replace("Ġ", " ").replace("Ċ", " ")) <= allowed)


def parse_citations(text: str, sources: list[Hit]) -> list[Citation]:
    """Citations ``[n]`` / ``[n, m]`` in the answer, mapped to the prompt's chunks; out-of-range numbers dropped."""
    seen: dict[int, Citation] = {}
    for match in _CITATION.finditer(text):
        for part in match.group(1).split(","):
            n = int(part)
            if 1 <= n <= len(sources) and n not in seen:
                seen[n] = _citation(n, sources[n - 1], "model")
    return list(seen.values())


def attribute_by_overlap(text: str, sources: list[Hit], min_share: float = 0.6) -> list[Citation]:
    """Chunks that answer sentences were drawn from: most of a sentence's words occur in the chunk.

    The base 135M model rarely writes ``[n]`` itself; this keeps its answers traceable to sources.
    """
    found: dict[int, Citation] = {}
    chunk_words = [_words(h.text) for h in sources]
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        words = _words(sentence)
        if len(words) < 2:
            continue
        shares = [len(words & cw) / len(words) for cw in chunk_words]
        best = max(range(len(shares)), key=shares.__getitem__, default=None)
        if best is not None and shares[best] >= min_share and best + 1 not in found:
            found[best + 1] = _citation(best + 1, sources[best], "overlap")
    return sorted(found.values(), key=lambda c: c.n)


def cite(text: str, sources: list[Hit]) -> list[Citation]:
    """The model's own citations when it wrote any, else attribution by word overlap."""
    return parse_citations(text, sources) or attribute_by_overlap(text, sources)


def _citation(n: int, hit: Hit, how: str) -> Citation:
    meta = hit.metadata
    return Citation(n, hit.uri, str(meta.get("section") or ""), int(meta.get("page") or 0), hit.score, hit.id, how)


def _words(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9][a-z0-9_\-]*", text.lower())
    return {w for w in words if (len(w) > 2 or w.isdigit()) and w not in _STOP}


def _answer(gen: Generator, prompt: Prompt, kwargs: dict[str, Any], streamer: Any, errors: list[BaseException],
            fast_prefill: bool) -> None:
    """The whole answer on the answering thread: the prompt pass (ragtune's where it applies), then decoding.

    A failure is kept for the consumer to re-raise and the stream is ended: never a hung stream.
    """
    import torch

    try:
        with torch.inference_mode():
            rest: dict[str, Any] | None = kwargs
            if fast_prefill and gen.prefill is not None:
                rest = _prefill(gen, prompt, kwargs, streamer)
            if rest is not None:
                gen.model.generate(**rest)
    except BaseException as exc:  # re-raised by the consumer; the stream must still end
        errors.append(exc)
        streamer.end()


def _prefill(gen: Generator, prompt: Prompt, kwargs: dict[str, Any], streamer: Any) -> dict[str, Any] | None:
    """The prompt's pass, its first token streamed; generate()'s arguments for the rest.

    None when the answer is already complete (an end token first, or a one-token answer).
    """
    import torch

    assert gen.prefill is not None
    logits, cache = gen.prefill(prompt.input_ids, prompt.shared_prefix)
    ids = kwargs["input_ids"]
    first = kwargs["logits_processor"](ids, logits).argmax(dim=-1, keepdim=True)
    streamer.put(ids)  # the prompt, which the streamer skips, as generate() would send it
    streamer.put(first[0])
    ends = gen.model.generation_config.eos_token_id
    if int(first) in (ends if isinstance(ends, list) else [ends]) or kwargs["max_new_tokens"] <= 1:
        streamer.end()
        return None
    ids = torch.cat([ids, first], dim=1)
    return {**kwargs, "input_ids": ids, "attention_mask": torch.ones_like(ids), "cache": cache,
            "max_new_tokens": kwargs["max_new_tokens"] - 1, "streamer": _Continuation(streamer)}


def _stopping_when(stop: threading.Event) -> Any:
    """generate()'s stopping criteria: end as soon as ``stop`` is set."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

    return StoppingCriteriaList([Stop()])


class _Continuation:
    """generate()'s streamer when it continues a prefilled prompt: its first put (the prompt again) is dropped."""

    def __init__(self, streamer: Any):
        self.streamer, self.started = streamer, False

    def put(self, value: Any) -> None:
        if self.started:
            self.streamer.put(value)
        self.started = True

    def end(self) -> None:
        self.streamer.end()


def _timed_streamer(tokenizer: Any) -> Any:
    """A TextIteratorStreamer that also records when the first new token arrived and how many came."""
    from transformers import TextIteratorStreamer

    class TimedStreamer(TextIteratorStreamer):
        first_token_at: float | None = None
        new_tokens = 0

        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.new_tokens += int(value.numel())
                self.first_token_at = self.first_token_at or time.perf_counter()
            super().put(value)

    return TimedStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
