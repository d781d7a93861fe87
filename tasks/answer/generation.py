"""The generator: loaded once per process, greedy decoding, streamed token by token.

Serving guards greedy decoding against loops (``tasks.answer.decoding``); citations are mapped back
by ``tasks.answer.citations``.

Generation (the prompt pass, then decoding) runs on the process's answering thread
(``tasks.runtime.torch_thread.on_torch_thread``, which also encodes questions and loads models) feeding a
``TextIteratorStreamer``, so the CLI and the API can show tokens as they come; a failure there is
re-raised in the caller, never a hung stream, and a caller that stops reading stops the decoding.

The prompt's forward pass (time to first token) goes through tasks/answer/prefill.py when the model is
one it reproduces (SmolLM2 and other plain Llama models on a CPU, a tested transformers release): the
first token comes from its logits and ``generate()`` continues from its cache. ``fast_prefill=False``
keeps transformers' own prefill: at load (``load_generator``: the pass is not built, the model's weights
stay as loaded) or per answer (``stream_answer``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tasks.runtime  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from tasks.answer.decoding import Decoding, answer_processors
from tasks.answer.prompting import Prompt, shared_prefix_ids
from tasks.runtime.torch_thread import in_torch_thread, on_torch_thread, torch_pool

if TYPE_CHECKING:
    from tasks.answer.prefill import FastPrefill


@dataclass
class Generator:
    model: Any
    tokenizer: Any
    name: str
    path: Path
    prefill: FastPrefill | None = None  # the lean prompt pass, where the model is one it reproduces
    stop_ids: list[int] = field(default_factory=list)  # end of the assistant turn, EOS (prompting.stop_token_ids)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generate at a time per model

    @property
    def context_tokens(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def ends(self) -> list[int]:
        """The tokens an answer ends at: ``stop_ids``, else the model's own end tokens."""
        own = self.model.generation_config.eos_token_id
        return self.stop_ids or (own if isinstance(own, list) else [own])


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0


def load_generator(path: str, name: str, fast_prefill: bool = True) -> Generator:
    """Load a causal LM directory once per process (a second call with the same arguments is free).

    Loaded on the answering thread (``tasks.runtime.torch_thread``): the load runs the shared prefix's pass.
    ``fast_prefill=False`` (``answer.fast_prefill``) loads it without ragtune's prompt pass.
    """
    return _cached_generator(path, name, fast_prefill)


@lru_cache(maxsize=2)
def _cached_generator(path: str, name: str, fast_prefill: bool) -> Generator:
    return on_torch_thread(_load_generator, path, name, fast_prefill)


def _load_generator(path: str, name: str, fast_prefill: bool = True) -> Generator:
    from transformers import AutoModelForCausalLM

    from tasks.answer.prefill import FastPrefill
    from tasks.answer.prompting import load_tokenizer, stop_token_ids

    tokenizer = load_tokenizer(path)  # its chat template, or the role-tagged fallback
    device, dtype = generator_placement()
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(device).eval()
    prefill = FastPrefill.for_model(model) if fast_prefill else None  # None: any other architecture, or a GPU
    if prefill is not None:
        prefill.remember(shared_prefix_ids(tokenizer))
    return Generator(model, tokenizer, name, Path(path), prefill, stop_token_ids(tokenizer, model.generation_config))


def generator_placement() -> tuple[str, Any]:
    """CUDA when torch sees a GPU (bf16 where it supports it, else fp32), else the CPU in fp32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return "cpu", torch.float32


def stream_answer(
    gen: Generator, prompt: Prompt, max_new_tokens: int, stats: GenerationStats | None = None,
    decoding: Decoding | None = None, fast_prefill: bool = True,
) -> Iterator[str]:
    """Yield the answer's text pieces as they are generated (greedy decoding, loop guards per ``decoding``).

    ``fast_prefill=False`` runs transformers' prompt pass even where ``gen`` has ragtune's.
    """
    import torch

    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = prompt.n_tokens
    streamer = _timed_streamer(gen.tokenizer)
    ids = torch.tensor([prompt.input_ids], device=gen.model.device)
    kwargs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new_tokens,
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
        "streamer": streamer, "pad_token_id": gen.tokenizer.pad_token_id, "eos_token_id": gen.ends,
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
    if int(first) in gen.ends or kwargs["max_new_tokens"] <= 1:
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

            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

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
