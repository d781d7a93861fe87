"""`ragtune config`: every setting with its environment variable, current value and meaning."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import BaseModel, SecretStr

from ragtune.commands._common import JsonOption, emit


def register(app: typer.Typer) -> None:
    app.command("config")(show_config)


def settings_reference(model: BaseModel, prefix: str = "RAGTUNE_") -> list[dict[str, Any]]:
    """One row per leaf setting; secrets shown as set/unset, never their value."""
    rows: list[dict[str, Any]] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        env = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel):
            rows += settings_reference(value, env + "__")
            continue
        shown = ("(set)" if value.get_secret_value() else "(unset)") if isinstance(value, SecretStr) else value
        rows.append({"env": env, "value": "(empty)" if shown == "" else shown, "description": field.description or ""})
    return rows


def show_config(markdown: bool = typer.Option(False, "--markdown", help="A Markdown table (for the README)."),
                as_json: bool = JsonOption) -> None:
    """Print the effective settings (environment variables use the RAGTUNE_ prefix, __ for nesting)."""
    from tasks.settings import get_settings

    rows = settings_reference(get_settings())
    if markdown:
        typer.echo("| variable | default | meaning |\n|---|---|---|")
        for row in rows:
            typer.echo(f"| `{row['env']}` | `{row['value']}` | {row['description']} |")
        return
    emit({"settings": rows}, as_json, lambda r: "\n".join(f"{x['env']}={x['value']}" for x in r["settings"]))
