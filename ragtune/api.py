"""The HTTP API: ``POST /ask`` (JSON, or NDJSON token stream), ``GET /healthz``, OpenAPI at ``/docs``, and
OpenAI's chat completions API (``/v1/chat/completions``, ``/v1/models``: ragtune/openai_api.py).

Every failure is a JSON ``{"detail": ...}`` with a status code that says whose fault it is
(4xx: the request; 503: Milvus or the inference engine down; 502: the engine refused; 500: a bug, logged
server-side, never a traceback to the client).
Generation is serialized per model (a CPU runs one generation at a time well); requests queue.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ragtune.openai_api import openai_error, openai_router, validation_message
from tasks.runtime.process import start_process
from tasks.settings import Settings, get_settings

log = logging.getLogger("ragtune.api")


class AskRequest(BaseModel):
    question: str = Field(..., min_length=1, description="The question; its length limit is in settings.")
    k: int | None = Field(None, ge=1, le=100, description="Chunks to retrieve (default from settings).")
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(None, description="Retrieval mode.")
    max_new_tokens: int | None = Field(None, ge=1, le=2048)
    stream: bool = Field(False, description="Stream NDJSON lines: {\"token\"} pieces, then {\"answer\"}.")


class CitationOut(BaseModel):
    n: int
    uri: str
    section: str
    page: int
    score: float
    chunk_id: str
    how: str


class AskResponse(BaseModel):
    question: str
    text: str
    citations: list[CitationOut]
    sources: list[dict[str, Any]]
    collection: str
    model: str
    release_id: str | None
    mode: str
    timings: dict[str, float]
    prompt_tokens: int
    new_tokens: int
    context_truncated: bool
    note: str
    engine: str


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (413), declared or streamed."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await _too_large(self.limit, send)
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(self.limit, send)


class _TooLarge(Exception):
    pass


async def _too_large(limit: int, send: Any) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = start_process(settings or get_settings())
    app = FastAPI(title="ragtune", version="0.1.0", summary="Answers from the indexed documents, with sources.")
    app.add_middleware(BodyLimit, limit=settings.answer.max_request_bytes)
    index = _IndexHolder(settings)
    auth = _Bearer(settings.answer.api_token.get_secret_value())

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return _health(settings, index)

    @app.post("/ask", response_model=AskResponse, dependencies=[Depends(auth)],
              responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}})
    def ask_endpoint(request: AskRequest) -> Any:
        stream = _start(settings, index, request.question, request.max_new_tokens, request.k, request.mode)
        if request.stream:
            return StreamingResponse(_ndjson(stream), media_type="application/x-ndjson")
        return stream.complete().to_dict()

    app.include_router(openai_router(settings, lambda question, new: _start(settings, index, question, new), auth))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
    return app


def _start(settings: Settings, index: _IndexHolder, question: str, max_new_tokens: int | None,
           k: int | None = None, mode: str | None = None) -> Any:
    """Retrieve, build the prompt (and send it, on an engine); map each expected failure to its status code."""
    from tasks.answer import retrieval
    from tasks.answer.answering import QuestionError, ask
    from tasks.answer.engine import EngineError, EngineUnavailableError
    from tasks.answer.prompting import PromptTooLongError

    try:
        return ask(settings, question, k, mode, max_new_tokens, index.get())
    except (QuestionError, PromptTooLongError) as exc:
        raise HTTPException(422, str(exc)) from None
    except EngineUnavailableError as exc:
        raise HTTPException(503, str(exc)) from None
    except EngineError as exc:
        raise HTTPException(502, str(exc)) from None
    except retrieval.CollectionNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except retrieval.IndexUnavailableError as exc:
        index.reset()
        raise HTTPException(503, str(exc)) from None
    except retrieval.RetrievalError as exc:
        raise HTTPException(409, str(exc)) from None


def _ndjson(stream: Any) -> Iterator[str]:
    try:
        for piece in stream:
            yield json.dumps({"token": piece}) + "\n"
        yield json.dumps({"answer": stream.answer.to_dict()}, default=str) + "\n"
    except Exception:  # headers are sent: the error goes in the stream, the traceback to the log
        log.exception("generation failed")
        yield json.dumps({"error": "generation failed; see the server log"}) + "\n"


def _health(settings: Settings, index: _IndexHolder) -> JSONResponse:
    from tasks.answer.serving import resolve_serving

    serving = resolve_serving(settings)
    body: dict[str, Any] = {"collection": serving.collection, "model": serving.model_name,
                            "release_id": serving.release_id}
    try:
        physical = index.get().resolve(serving.collection)
    except Exception as exc:  # Milvus down: report it, do not raise
        index.reset()
        return JSONResponse({**body, "status": "unavailable", "detail": f"Milvus: {exc}"}, status_code=503)
    if physical is None:
        return JSONResponse({**body, "status": "unavailable", "detail": "collection not found"}, status_code=503)
    return JSONResponse({**body, "status": "ok", "generation": physical})


_SCHEME = HTTPBearer(auto_error=False)


class _Bearer:
    """Require ``Authorization: Bearer <token>`` when settings hold a token (constant-time comparison)."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)]) -> None:
        if not self.token:
            return
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


async def _http_error(request: Request, exc: Any) -> Any:
    return openai_error(request, exc.status_code, str(exc.detail), exc.headers) or await http_exception_handler(
        request, exc)


async def _invalid(request: Request, exc: Any) -> Any:
    return openai_error(request, 400, validation_message(exc)) or await request_validation_exception_handler(
        request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


class _IndexHolder:
    """One Milvus client for the app's lifetime (opening Milvus Lite per request costs a process start)."""

    def __init__(self, settings: Settings):
        self.settings, self._lock = settings, threading.Lock()
        self._client: Any = None

    def get(self) -> Any:
        from tasks.answer import retrieval
        from tasks.stores import milvus
        with self._lock:
            if self._client is None:
                try:
                    self._client = milvus.connect(self.settings)
                except milvus.SERVICE_ERRORS as exc:
                    raise retrieval.IndexUnavailableError(str(exc)) from None
            return self._client

    def reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # already broken; a fresh client is opened on the next request
                log.debug("closing a broken Milvus client failed", exc_info=True)
