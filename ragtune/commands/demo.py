"""`ragtune demo` (`make demo`): the whole loop on embedded defaults, on a frozen snapshot of the project's docs.

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

# The demo's corpus is a fixed snapshot of the project's docs, not the living docs/: the gate compares the
# fine-tuned model with the base on grounded rows drawn from this corpus, so a docs edit would move its inputs.
DEMO_DOCS = Path("examples/docs")
DocsOption = typer.Option(DEMO_DOCS, "--docs", help="Documents to index (default: examples/docs/, a frozen "
                          "snapshot of the project's docs).")
ExamplesOption = typer.Option(Path("examples/support.jsonl"), "--examples", help="Curated examples file.")
QUESTION = "What is a collection generation?"
# A demo-sized evaluation: the generation metrics of 8 eval examples, short answers (CPU minutes matter).
# No abstention rows: on 61 examples, 3 of them taught the model to answer "I don't know." to every
# context (first-token probability 0.6-0.9 on rows whose target cites); the gate refused it (docs/training.md).
DEMO_SETTINGS = {"RAGTUNE_TRAINING__EVAL_EXAMPLES": "8", "RAGTUNE_TRAINING__MAX_NEW_TOKENS": "48",
                 "RAGTUNE_DATASET__ABSTAIN_SHARE": "0"}


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
    """Run the whole loop once and ask the result a question; the stack keeps running for the UI.

    Exit code 3 when the release gate refused the fine-tuned model: the demo says so and shows what serves instead.
    """
    started = time.monotonic()
    for path in (docs, examples):
        if not path.exists():
            raise UserError(f"{path} does not exist")
    laps = _Laps()
    settings = laps.time("stack", _start_stack)
    stages = laps.time("pipeline", _run_pipeline, docs, examples, preset)
    release_id = stages["promote"].get("release_id")
    if not release_id:
        _say("the release gate REFUSED the fine-tuned model: nothing was promoted, serving is unchanged")
        for reason in stages["promote"].get("reasons", []):
            _say(f"  gate: {reason}")
    answer = laps.time("ask", _ask, question, release_id)
    result = {"stages": stages, "answer": answer, "promoted_release": release_id, "seconds": laps.seconds,
              "ui_url": f"http://127.0.0.1:{settings.prefect.port}", "wall_s": round(time.monotonic() - started, 1),
              "stop": "ragtune stack down   (or: make stack-down)"}
    emit(result, as_json, _human)
    if not release_id:
        raise typer.Exit(3)


class _Laps:
    """Wall seconds of each part of the demo, for the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def time(self, name: str, call: Any, *args: Any) -> Any:
        started = time.monotonic()
        try:
            return call(*args)
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)


def _say(message: str) -> None:
    typer.secho(f"==> {message}", fg=typer.colors.CYAN, err=True)


def _start_stack() -> Any:
    """SeaweedFS and the Prefect server from tasks/stack; then settings and Prefect point at them."""
    from ragtune import stack
    from tasks.settings import get_settings
    from tasks.stores.s3 import S3Store

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


def _ask(question: str, promoted: str | None) -> dict[str, Any]:
    """`ragtune ask --json` in its own process, as a user runs it: tokens stream to the terminal."""
    _say(f"ragtune ask {question!r}")
    ragtune = Path(sys.executable).parent / "ragtune"
    answer = _last_json(subprocess.run([str(ragtune), "ask", question, "--json"], stdout=subprocess.PIPE, text=True),
                        "`ragtune ask`")
    if promoted and answer["release_id"] != promoted:
        raise UserError(f"`ragtune ask` answered from release {answer['release_id']}, not the promoted {promoted}: "
                        "the promotion did not switch serving")
    how = {c["n"]: c["how"] for c in answer["citations"]}
    cited = [{"n": s["n"], "uri": s["uri"], "how": how[s["n"]]} for s in answer["sources"] if s["n"] in how]
    return {"text": answer["text"], "release_id": answer["release_id"], "model": answer["model"], "cited": cited}


def _human(result: dict[str, Any]) -> str:
    seconds = result["seconds"]
    lines = ["", "ragtune demo: done in {:.0f} s (stack {:.0f} s, release pipeline {:.0f} s, ask {:.0f} s)".format(
        result["wall_s"], seconds["stack"], seconds["pipeline"], seconds["ask"])]
    for name, summary in result["stages"].items():
        if name == "evaluate":
            lines += _metrics_table(summary)
        else:
            lines.append(f"  {name:<9} {json.dumps(summary, default=str)}")
    answer, promoted = result["answer"], result["promoted_release"]
    served = (f"release {promoted}" if promoted else "NO promoted release (the gate refused the candidate); "
              f"served by release {answer['release_id'] or 'none'}")
    lines += ["", f"answer ({served}, model {answer['model']}):", f"  {answer['text']}",
              "cited: " + (", ".join(f"[{c['n']}] {c['uri']}" for c in answer["cited"]) or "none")]
    lines += ["", f"Prefect UI: {result['ui_url']}", f"stop the stack: {result['stop']}"]
    return "\n".join(lines)


def _metrics_table(evaluation: dict[str, Any]) -> list[str]:
    """Base vs candidate on the demo's eval split, one metric per line."""
    base, cand = evaluation.get("base", {}), evaluation.get("candidate", {})
    lines = [f"  {'evaluate':<9} {'metric':<20} {'base':>8} {'candidate':>10}   ({evaluation.get('seconds')} s)"]
    for metric in sorted(set(base) | set(cand)):
        lines.append(f"  {'':<9} {metric:<20} {_num(base.get(metric)):>8} {_num(cand.get(metric)):>10}")
    return lines


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"
