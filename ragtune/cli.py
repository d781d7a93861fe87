"""The `ragtune` command: one entry point to every flow.

Each module in ``ragtune.commands`` exposes ``register(app)``; they are discovered here so a new
command never edits this file. Heavy imports (torch, pymilvus, prefect) live inside the command
functions so ``ragtune --help`` stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from ragtune import commands

app = typer.Typer(
    name="ragtune",
    help="Keep an LLM application's knowledge (Milvus index) and behaviour (fine-tuned model) current.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

@app.callback()
def _connect_prefect() -> None:
    """Runs before every command: flows report to the configured Prefect server, if any; telemetry is off
    unless the environment turns it on (``tasks.runtime.process``, applied before Prefect is imported)."""
    import os

    from tasks.runtime.process import process_settings

    api_url = process_settings().prefect.api_url
    if api_url:  # otherwise Prefect starts its ephemeral API, and runs are local only
        os.environ["PREFECT_API_URL"] = api_url
    # Prefect gives its ephemeral API 20 s to start; a first start on two busy cores (database
    # migrations, cold imports) took longer, and `ragtune eval pages` failed before doing anything.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


for _info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"ragtune.commands.{_info.name}").register(app)


if __name__ == "__main__":
    app()
