"""The generator: loaded once per process, greedy decoding, streamed token by token, citations mapped back.

Generation runs in a worker thread feeding a ``TextIteratorStreamer`` so the CLI and the API can show
tokens as they come; a failure inside that thread is re-raised in the caller, never a hung stream.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import tasks.models  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from tasks.prompting import Prompt
from tasks.types import Hit

_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_STOP = frozenset({"the", "and", "for", "are", "was", "were", "with", "that", "this", "from", "you", "your",
                   "can", "has", "have", "not", "but", "all", "any", "its"})


@dataclass
class Generator:
    model: Any
    tokenizer: Any
    name: str
    path: Path
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
    """Load a causal LM directory once per process (a second call with the same path is free)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return Generator(model, tokenizer, name, Path(path))


def stream_answer(
    gen: Generator, prompt: Prompt, max_new_tokens: int, stats: GenerationStats | None = None
) -> Iterator[str]:
    """Yield the answer's text pieces as they are generated (greedy decoding)."""
    import torch

    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = prompt.n_tokens
    streamer = _timed_streamer(gen.tokenizer)
    ids = torch.tensor([prompt.input_ids])
    kwargs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new_tokens,
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
        "streamer": streamer, "pad_token_id": gen.tokenizer.eos_token_id,
    }
    errors: list[BaseException] = []
    start = time.perf_counter()
    with gen.lock:
        worker = threading.Thread(target=_generate, args=(gen.model, kwargs, streamer, errors), daemon=True)
        worker.start()
        yield from streamer
        worker.join()
    stats.total_s = time.perf_counter() - start
    stats.new_tokens = streamer.new_tokens
    if streamer.first_token_at is not None:
        stats.first_token_s = streamer.first_token_at - start
    if errors:
        raise RuntimeError(f"generation failed: {errors[0]}") from errors[0]


def generate_answer(gen: Generator, prompt: Prompt, max_new_tokens: int, stats: GenerationStats | None = None) -> str:
    return "".join(stream_answer(gen, prompt, max_new_tokens, stats))


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


def _generate(model: Any, kwargs: dict[str, Any], streamer: Any, errors: list[BaseException]) -> None:
    import torch

    try:
        with torch.inference_mode():
            model.generate(**kwargs)
    except BaseException as exc:  # re-raised by the consumer; the stream must still end
        errors.append(exc)
        streamer.end()


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
