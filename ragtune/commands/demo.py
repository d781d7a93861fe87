"""`ragtune demo` (`make demo`): the whole loop on embedded defaults, on the project's own docs.

Local stack up (SeaweedFS S3, Prefect server + UI) -> release pipeline (ingest -> dataset gate ->
short fine-tune -> evaluation -> promotion to S3) -> `ragtune ask` answers from the promoted release.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from ragtune.commands._common import JsonOption, UserError, clear_errors, emit

DocsOption = typer.Option(Path("docs"), "--docs", help="Documents to index (default: the project's docs/).")
ExamplesOption = typer.Option(Path("examples/support.jsonl"), "--examples", help="Curated examples file.")
QUESTION = "What is a collection generation?"
# A demo-sized evaluation: the generation metrics of 8 eval examples, short answers (CPU minutes matter).
DEMO_SETTINGS = {"RAGTUNE_TRAINING__EVAL_EXAMPLES": "8", "RAGTUNE_TRAINING__MAX_NEW_TOKENS": "48"}


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@clear_errors
def demo(
    docs: Path = DocsOption,
    examples: Path = ExamplesOption,
    question: str = typer.Option(QUESTION, "--question", help="What to ask the promoted release at the end."),
    preset: str = typer.Option("demo", "--preset", help="Training preset (tasks/training/config.py)."),
    as_json: bool = JsonOption,
) -> None:
    """Run the whole loop once and ask the result a question; the stack keeps running for the UI."""
    started = time.monotonic()
    for path in (docs, examples):
        if not path.exists():
            raise UserError(f"{path} does not exist")
    settings = _start_stack()
    stages = _run_pipeline(docs, examples, preset)
    answer = _ask(question)
    result = {"stages": stages, "answer": answer, "ui_url": f"http://127.0.0.1:{settings.prefect.port}",
              "stop": "ragtune stack down   (or: make stack-down)", "wall_s": round(time.monotonic() - started, 1)}
    emit(result, as_json, _human)


def _say(message: str) -> None:
    typer.secho(f"==> {message}", fg=typer.colors.CYAN, err=True)


def _start_stack() -> Any:
    """SeaweedFS and the Prefect server from tasks/stack; then settings and Prefect point at them."""
    from ragtune.settings import get_settings
    from tasks import stack
    from tasks.s3 import S3Store

    settings = get_settings()
    stack.require_binaries()
    for service in (stack.seaweedfs(settings), stack.prefect_server(settings)):
        _say(f"starting {service.name} (log: {service.log_file})")
        stack.start(service)
    S3Store(settings).ensure_bucket()
    api = f"http://127.0.0.1:{settings.prefect.port}/api"
    os.environ.update({"PREFECT_API_URL": api, "RAGTUNE_PREFECT__API_URL": api})
    for name, value in DEMO_SETTINGS.items():
        os.environ.setdefault(name, value)
    get_settings.cache_clear()
    _say(f"Prefect UI: http://127.0.0.1:{settings.prefect.port}  (runs appear there as they start)")
    return get_settings()


def _run_pipeline(docs: Path, examples: Path, preset: str) -> dict[str, Any]:
    """`python -m flows.pipeline` in its own process: when it exits, the Milvus Lite file is free for `ragtune ask`."""
    _say(f"release pipeline: ingest {docs} -> dataset {examples} -> fine-tune ({preset}) -> evaluate -> promote")
    argv = [sys.executable, "-m", "flows.pipeline", "--docs", str(docs), "--examples", str(examples),
            "--preset", preset]
    return _last_json(subprocess.run(argv, stdout=subprocess.PIPE, text=True), "the release pipeline")


def _last_json(done: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise UserError(f"{what} failed (exit {done.returncode}): see its log above")
    return dict(json.loads(lines[-1]))


def _ask(question: str) -> dict[str, Any]:
    """`ragtune ask --json` in its own process, as a user runs it: tokens stream to the terminal."""
    _say(f"ragtune ask {question!r}")
    ragtune = Path(sys.executable).parent / "ragtune"
    answer = _last_json(subprocess.run([str(ragtune), "ask", question, "--json"], stdout=subprocess.PIPE, text=True),
                        "`ragtune ask`")
    if not answer["release_id"]:
        raise UserError("`ragtune ask` answered without a promoted release: the promotion did not switch serving")
    cited = {c["n"] for c in answer["citations"]}
    return {"text": answer["text"], "release_id": answer["release_id"], "model": answer["model"],
            "cited_sources": [s["uri"] for s in answer["sources"] if s["n"] in cited]}


def _human(result: dict[str, Any]) -> str:
    lines = ["", "ragtune demo: done in {:.0f} s".format(result["wall_s"])]
    for name, summary in result["stages"].items():
        lines.append(f"  {name:<9} {json.dumps(summary, default=str)}")
    answer = result["answer"]
    lines += ["", f"answer (release {answer['release_id']}, model {answer['model']}):", f"  {answer['text']}",
              "cited: " + (", ".join(answer["cited_sources"]) or "none")]
    lines += ["", f"Prefect UI: {result['ui_url']}", f"stop the stack: {result['stop']}"]
    return "\n".join(lines)
