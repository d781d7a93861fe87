"""What every command shares: clear errors instead of tracebacks, and the `--json` contract."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import BaseModel

if TYPE_CHECKING:
    from tasks.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R", bound=BaseModel | dict[str, Any])

JsonOption = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")
CollectionOption = typer.Option("", "--collection", metavar="NAME",
                                help="Collection to search: a serving alias or a physical collection; "
                                     "empty = settings.milvus.collection.")


class UserError(Exception):
    """An error the user can fix; shown as a one-line message, never a traceback."""


def emit(result: R, as_json: bool, human: Callable[[R], str] | None = None) -> None:
    """Print a command's result: a human summary, or one JSON object as the last stdout line.

    A typed result (a flow's) prints as ``model_dump(mode="json")``: its keys are the --json contract.
    """
    data = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    if as_json:
        sys.stdout.flush()
        print(json.dumps(data, default=str, sort_keys=True), flush=True)
    else:
        typer.echo(human(result) if human else json.dumps(data, default=str, indent=2))


def with_collection(settings: Settings, name: str) -> Settings:
    """``settings`` with ``name`` as the collection to serve (empty: unchanged); other sections are shared."""
    if not name:
        return settings
    return settings.model_copy(update={"milvus": settings.milvus.model_copy(update={"collection": name})})


def clear_errors(func: F) -> F:
    """Turn expected failures into `error: ...` on stderr and exit code 1 (2 for bad usage)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except (UserError, FileNotFoundError, ValueError, PermissionError, ConnectionError) as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        except RuntimeError as exc:  # Prefect wraps task failures; the message is the useful part
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


_GROUPS: dict[str, typer.Typer] = {}


def subgroup(app: typer.Typer, name: str, help: str) -> typer.Typer:
    """A command group (`ragtune eval ...`) that several command modules can add commands to."""
    if name not in _GROUPS:
        _GROUPS[name] = typer.Typer(name=name, help=help, no_args_is_help=True)
        app.add_typer(_GROUPS[name], name=name)
    return _GROUPS[name]
