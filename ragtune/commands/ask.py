"""`ragtune ask "QUESTION"` (tokens streamed to the terminal) and `ragtune serve` (the HTTP API)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from ragtune.commands._common import CollectionOption, JsonOption, clear_errors, emit, with_collection

if TYPE_CHECKING:
    from tasks.settings import Settings


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
    app.command("serve")(serve)


@clear_errors
def ask(
    question: str = typer.Argument(..., help="The question."),
    k: int = typer.Option(None, "--k", min=1, max=100, help="Chunks to retrieve (default: settings answer.k)."),
    mode: str = typer.Option(None, "--mode", help="dense | bm25 | hybrid (default: settings answer.mode)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Longest answer in tokens."),
    collection: str = CollectionOption,
    as_json: bool = JsonOption,
) -> None:
    """Answer a question from the indexed documents, citing them; tokens appear as they are generated.

    The production release answers with its fine-tuned model when the collection is its own (the default);
    another collection is answered by the base generator. The answer names the collection searched.
    """
    from tasks.answer.answering import ask as start
    from tasks.settings import get_settings

    stream = start(with_collection(get_settings(), collection), question, k, mode, max_new_tokens)
    out = sys.stderr if as_json else sys.stdout  # --json keeps stdout for the one JSON line
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    assert stream.answer is not None
    emit(stream.answer.to_dict(), as_json, _sources)


def _sources(answer: dict[str, Any]) -> str:
    cited = {c["n"]: c["how"] for c in answer["citations"]}
    lines = ["", "Sources:"]
    for s in answer["sources"]:
        mark = f"  <- cited ({cited[s['n']]})" if s["n"] in cited else ""
        where = " / ".join(str(p) for p in (s["section"], f"p. {s['page']}" if s["page"] else "") if p)
        lines.append(f"  [{s['n']}] {s['uri']}{' — ' + where if where else ''}  score {s['score']:.3f}{mark}")
    t = answer["timings"]
    lines.append(f"\n{answer['collection']} · {answer['mode']} · {answer['model']} · release "
                 f"{answer['release_id'] or 'none'} · embed {t['embed_s'] * 1000:.0f} ms · search "
                 f"{t['search_s'] * 1000:.0f} ms · first token {t['first_token_s']:.2f} s · "
                 f"generate {t['generate_s']:.2f} s ({answer['new_tokens']} tokens)")
    if answer["note"]:
        lines.append(f"note: {answer['note']}")
    return "\n".join(lines)


@clear_errors
def serve(
    host: str = typer.Option(None, "--host", help="Bind address (default: settings answer.host)."),
    port: int = typer.Option(None, "--port", help="Port (default: settings answer.port)."),
    collection: str = CollectionOption,
) -> None:
    """Serve the HTTP API: POST /ask, GET /healthz, OpenAPI docs at /docs, and OpenAI's chat completions API
    (POST /v1/chat/completions, GET /v1/models) for chat UIs and OpenAI SDKs.

    A collection named with --collection must exist when the server starts; the configured default may be
    ingested later (/healthz says 503 until then).
    """
    import uvicorn

    from ragtune.api import create_app
    from tasks.answer.answering import serving_generator
    from tasks.answer.retrieval import query_embedder
    from tasks.answer.serving import resolve_serving
    from tasks.settings import get_settings

    settings = with_collection(get_settings(), collection)
    serving = resolve_serving(settings)
    if collection:
        _check_collection(settings, serving.collection)
    if serving.engine == "openai":
        model = _check_engine(settings, serving.engine_model)
    else:
        serving_generator(serving, settings.answer)  # load before the first request, not during it
        model = serving.model_name
    query_embedder(settings)  # loaded before the first request, not during it
    token = settings.answer.api_token.get_secret_value()
    auth = "bearer token required" if token else "no auth (set RAGTUNE_ANSWER__API_TOKEN)"
    typer.echo(f"serving {serving.collection} with {model}; {auth}")
    if serving.note:
        typer.echo(f"note: {serving.note}")
    uvicorn.run(create_app(settings), host=host or settings.answer.host, port=port or settings.answer.port)


def _check_engine(settings: Settings, name: str) -> str:
    """The engine's model as it will answer, or a warning when the engine cannot be asked now (the API answers
    503 until it can)."""
    from tasks.answer.engine import EngineError, engine_client, engine_model

    where = f"{name or 'its first model'} on the engine at {settings.engine.base_url}"
    try:
        return f"{engine_model(engine_client(settings.engine), name)} on the engine at {settings.engine.base_url}"
    except EngineError as exc:
        typer.secho(f"warning: {exc}", err=True, fg=typer.colors.YELLOW)
        return where


def _check_collection(settings: Settings, name: str) -> None:
    """Refuse to start on a collection that does not exist (a typo would otherwise answer 404 to every
    request); Milvus being down is not checked here: the API answers 503 until it is back."""
    from tasks.answer.retrieval import check_model
    from tasks.stores import milvus

    try:
        with milvus.connect(settings) as index:
            check_model(index, name, settings)
    except milvus.SERVICE_ERRORS as exc:
        typer.secho(f"warning: Milvus at {settings.milvus_uri} cannot be checked: {exc}", err=True,
                    fg=typer.colors.YELLOW)
