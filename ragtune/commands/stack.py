"""`ragtune stack up | down | status`: the local services, on loopback, under the data dir."""

from __future__ import annotations

from typing import Any

import typer

from ragtune.commands._common import JsonOption, clear_errors, emit, subgroup

MilvusOption = typer.Option(False, "--milvus", help="Also run a real Milvus 2.3 standalone (server code path).")


def register(app: typer.Typer) -> None:
    group = subgroup(app, "stack", "The local stack: SeaweedFS (S3), Prefect server + UI, optional Milvus server.")
    group.command("up")(up)
    group.command("down")(down)
    group.command("status")(status)


@clear_errors
def up(milvus: bool = MilvusOption, as_json: bool = JsonOption) -> None:
    """Start the services (idempotent: healthy ones are left alone) and wait until healthy."""
    from ragtune import stack
    from tasks.settings import get_settings
    settings = get_settings()
    stack.require_binaries()
    started = {}
    for service in stack.services(settings, with_milvus=milvus):
        typer.echo(f"starting {service.name} ...", err=True)
        started[service.name] = stack.start(service)
    from tasks.stores.s3 import S3Store

    S3Store(settings).ensure_bucket()
    emit({"started": started, **_health(settings, milvus)}, as_json, _human)


@clear_errors
def down(as_json: bool = JsonOption) -> None:
    """Stop every service of the stack (process groups: nothing is left behind)."""
    from ragtune import stack
    from tasks.settings import get_settings
    settings = get_settings()
    stopped = {s.name: stack.stop(s) for s in stack.services(settings, with_milvus=True)}
    emit({"stopped": stopped}, as_json, lambda r: "\n".join(f"{k}: {'stopped' if v else 'not running'}"
                                                            for k, v in r["stopped"].items()))


@clear_errors
def status(as_json: bool = JsonOption) -> None:
    """Health of each service: an S3 put/get round trip (and bad credentials refused), Prefect API and UI."""
    from tasks.settings import get_settings

    settings = get_settings()
    result = _health(settings, milvus=True)
    emit(result, as_json, _human)
    if not all(v.get("healthy") for k, v in result.items() if k != "milvus" or v.get("running")):
        raise typer.Exit(1)


def _health(settings: Any, milvus: bool) -> dict[str, Any]:
    from ragtune import health
    result = {"s3": health.s3(settings), "prefect": health.prefect(settings)}
    if milvus:
        result["milvus"] = health.milvus_server(settings)
    return result


def _human(result: dict[str, Any]) -> str:
    lines = []
    for name, info in result.items():
        if name == "started":
            continue
        mark = "ok " if info.get("healthy") else ("off" if not info.get("running", True) else "BAD")
        detail = ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("healthy",))
        lines.append(f"[{mark}] {name}: {detail}")
    if result.get("prefect", {}).get("healthy"):
        lines.append(f"Prefect UI: {result['prefect']['ui']}   (stop everything with `ragtune stack down`)")
    return "\n".join(lines)
