"""Generation on an OpenAI-compatible inference engine: vLLM, llama.cpp's llama-server, TGI, Ollama, or
another ``ragtune serve``. The only module that imports openai.

The prompt is ragtune's own (``tasks.answer.prompting.build_prompt``: budgeted, numbered context, sanitized
documents), sent as the chat messages whose rendering is exactly that prompt; the engine applies its model's
chat template. So retrieval, the prompt budget and citations are the same as in process; decoding is the
engine's (greedy: temperature 0; its own repetition controls).

The request is sent when the answer starts (``open_chat``), so an engine that is down, refuses the key or does
not serve the model fails before the first token, with an error the API maps to a status code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tasks.answer.generation import GenerationStats, until_prompt_markup
from tasks.answer.prompting import Prompt
from tasks.settings import EngineSettings

_USER_START, _USER_END = "Documents:\n", "</question>"


class EngineError(RuntimeError):
    """The engine refused the request (unknown model, bad key, bad request); the message says which."""


class EngineUnavailableError(EngineError):
    """The engine cannot be reached or failed on its side (connection, timeout, 5xx)."""


@dataclass
class EngineChat:
    """An answer the engine is streaming: iterate ``pieces`` for its text."""

    stream: Any
    model: str
    prompt_tokens: int
    started: float

    def pieces(self, stats: GenerationStats) -> Iterator[str]:
        stats.prompt_tokens = self.prompt_tokens
        yield from until_prompt_markup(self._deltas(stats))
        stats.total_s = time.perf_counter() - self.started

    def _deltas(self, stats: GenerationStats) -> Iterator[str]:
        import openai

        counted = 0
        try:
            with self.stream as chunks:
                for chunk in chunks:
                    if chunk.usage is not None:  # the last chunk, where the engine reports usage
                        stats.prompt_tokens = chunk.usage.prompt_tokens or stats.prompt_tokens
                        counted = chunk.usage.completion_tokens or counted
                    for choice in chunk.choices:
                        if text := choice.delta.content:
                            stats.first_token_s = stats.first_token_s or time.perf_counter() - self.started
                            stats.new_tokens += 1  # a chunk per token on the engines named above
                            yield text
        except openai.APIError as exc:
            raise EngineUnavailableError(f"the engine failed while answering: {_message(exc)}") from None
        stats.new_tokens = counted or stats.new_tokens


def engine_client(engine: EngineSettings) -> Any:
    """One ``openai.OpenAI`` client per engine per process (it keeps a connection pool)."""
    if not engine.base_url:
        raise EngineError("engine.kind is openai but no engine.base_url is set (RAGTUNE_ENGINE__BASE_URL)")
    return _client(engine.base_url, engine.api_key.get_secret_value(), engine.timeout_s)


@lru_cache(maxsize=4)
def _client(base_url: str, api_key: str, timeout_s: float) -> Any:
    import openai

    # The client refuses an empty key; engines without auth ignore the header.
    return openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0)


def engine_model(client: Any, name: str) -> str:
    """``name``, or where it is empty the first model the engine lists (a llama-server serves one)."""
    if name:
        return name
    import openai

    try:
        listed = [m.id for m in client.models.list()]
    except openai.APIError as exc:
        raise _error(exc, "listing the engine's models") from None
    if not listed:
        raise EngineError(f"the engine at {client.base_url} lists no model; set RAGTUNE_ENGINE__MODEL")
    return str(listed[0])


def open_chat(client: Any, model: str, messages: list[dict[str, str]], max_new_tokens: int,
              prompt_tokens: int) -> EngineChat:
    """Send the request and wait for the response headers: a refusal fails here, before any token."""
    import openai

    started = time.perf_counter()
    try:
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_new_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True})
    except openai.APIError as exc:
        raise _error(exc, f"asking model {model!r}") from None
    return EngineChat(stream, model, prompt_tokens, started)


def prompt_messages(tokenizer: Any, prompt: Prompt) -> list[dict[str, str]]:
    """The chat messages whose rendering with ``tokenizer`` is exactly ``prompt.text`` (system rules, then the
    user turn with the budgeted documents and the question), checked by rendering them again."""
    from tasks.answer.prompting import SYSTEM_PROMPT

    start, end = prompt.text.find(_USER_START), prompt.text.rfind(_USER_END)
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt.text[start:end + len(_USER_END)]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if start < 0 or end < start or rendered != prompt.text:
        raise EngineError("the answering prompt cannot be sent as chat messages: its chat template changes it")
    return messages


@lru_cache(maxsize=4)
def engine_tokenizer(path: str) -> Any:
    """The tokenizer that measures the prompt budget, with the chat template in-process answering uses (its own,
    or the role-tagged fallback); no model weights are loaded."""
    from tasks.answer.prompting import load_tokenizer

    return load_tokenizer(path)


def _error(exc: Exception, doing: str) -> EngineError:
    import openai

    kind = EngineUnavailableError if isinstance(exc, openai.APIConnectionError | openai.InternalServerError) \
        else EngineError
    return kind(f"the engine failed {doing}: {_message(exc)}")


def _message(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' ({status})' if status else ''}: {getattr(exc, 'message', exc)}"
