"""The OpenAI chat completions API of `ragtune serve`: ``POST /v1/chat/completions`` (JSON, or SSE chunks ending
with ``data: [DONE]``) and ``GET /v1/models``, so chat UIs and OpenAI SDKs plug in unchanged.

Two models are listed:

- ``ragtune``: answers the last user message from the index, as ``POST /ask`` does (the same retrieval, prompt,
  engine and citations). Earlier turns and the client's own system message are not used: ragtune's rules are the
  system prompt. The response carries ``citations``, ``sources`` and ``ragtune`` (collection, model, release,
  engine, timings, note) beside ``choices``; in a stream, on the chunk with the ``finish_reason``.
- the model serving in process (the production release's checkpoint, e.g. ``checkpoint:sha256-...``, or the base
  generator): the messages answered as given, no retrieval, as an inference engine does. Another ragtune with
  ``RAGTUNE_ENGINE__KIND=openai`` sends its own prompt here. Not listed when this server itself uses an engine.

Errors on these paths have OpenAI's shape, ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tasks.settings import Settings

log = logging.getLogger("ragtune.api")
RAG_MODEL = "ragtune"
Start = Callable[[str, int | None], Any]  # (question, max_new_tokens) -> an AnswerStream, errors as HTTPException


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones, in order
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, user...: accepted, decoding stays greedy
    model: str = RAG_MODEL
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)
    stream_options: dict[str, Any] | None = None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def openai_router(settings: Settings, start: Start, auth: Any) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    @router.get("/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model(name) for name in served_models(settings)]}

    @router.post("/chat/completions", responses={400: {}, 401: {}, 404: {}, 413: {}, 503: {}})
    def chat_completions(request: ChatRequest) -> Any:
        stream = _answer(settings, request, start)
        reply = Reply(request.model, request.new_tokens() or settings.answer.max_new_tokens)
        if request.stream:
            usage = bool((request.stream_options or {}).get("include_usage"))
            return StreamingResponse(reply.events(stream, usage), media_type="text/event-stream")
        return reply.completion(stream.complete())

    return router


def served_models(settings: Settings) -> list[str]:
    """``ragtune`` (answers from the index), and the in-process model when this server generates itself."""
    from tasks.answer.serving import resolve_serving

    serving = resolve_serving(settings)
    return [RAG_MODEL] + ([serving.model_name] if serving.engine == "transformers" else [])


def _answer(settings: Settings, request: ChatRequest, start: Start) -> Any:
    if request.model == RAG_MODEL:
        users = [m.text() for m in request.messages if m.role == "user"]
        return start(users[-1] if users else "", request.new_tokens())
    if request.model not in served_models(settings):
        raise HTTPException(404, f"the model {request.model!r} does not exist; this server has "
                                 f"{', '.join(served_models(settings))}")
    from tasks.answer.answering import QuestionError, chat
    from tasks.answer.prompting import PromptTooLongError

    try:
        return chat(settings, [{"role": m.role, "content": m.text()} for m in request.messages], request.new_tokens())
    except (QuestionError, PromptTooLongError) as exc:
        raise HTTPException(400, str(exc)) from None


class Reply:
    """One completion's response objects: the whole completion, or its chunks."""

    def __init__(self, model: str, max_new_tokens: int):
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.model, self.max_new_tokens = model, max_new_tokens

    def completion(self, answer: Any) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": answer.text},
                  "finish_reason": self._finish(answer), "logprobs": None}
        return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(answer), **_extras(answer)}

    def events(self, stream: Any, usage: bool) -> Iterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        try:
            for piece in stream:
                yield self._chunk({"content": piece})
            answer = stream.answer
            yield self._chunk({}, self._finish(answer), _extras(answer))
            if usage:
                yield _event({**self._head("chat.completion.chunk"), "choices": [], "usage": _usage(answer)})
        except Exception:  # headers are sent: the error goes in the stream (the SDK raises it), the trace to the log
            log.exception("generation failed")
            yield _event({"error": {"message": "generation failed; see the server log", "type": "server_error"}})
        yield "data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, extras: dict[str, Any] | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _event({**self._head("chat.completion.chunk"), "choices": [choice], **(extras or {})})

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _finish(self, answer: Any) -> str:
        return "length" if answer.new_tokens >= self.max_new_tokens else "stop"


def _extras(answer: Any) -> dict[str, Any]:
    """What ragtune adds to OpenAI's objects (clients ignore fields they do not know)."""
    about = {k: getattr(answer, k) for k in ("collection", "model", "release_id", "engine", "mode", "timings",
                                             "note", "context_truncated")}
    return {"citations": [asdict(c) for c in answer.citations], "sources": answer.sources, "ragtune": about}


def _usage(answer: Any) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.new_tokens,
            "total_tokens": answer.prompt_tokens + answer.new_tokens}


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ragtune"}


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, default=str)}\n\n"


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 422: "invalid_request_error"}


def openai_error(request: Request, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> JSONResponse | None:
    """OpenAI's error shape on /v1 paths; None elsewhere (the API's own ``{"detail"}`` applies)."""
    if not request.url.path.startswith("/v1/"):
        return None
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = "model_not_found" if status == 404 and message.startswith("the model") else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
