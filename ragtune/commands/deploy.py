"""`ragtune deploy`: register pools, `prefect.yaml` deployments and automations, then run a worker."""

from __future__ import annotations

import subprocess
from typing import Any

import typer

from ragtune.commands._common import JsonOption, clear_errors, emit

PoolOption = typer.Option("cpu", "--pool", help="Which pool the worker serves: cpu (ragtune-cpu) or gpu (ragtune-gpu).")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)


@clear_errors
def deploy(
    worker: bool = typer.Option(True, "--worker/--no-worker", help="Start a worker after registering."),
    worker_only: bool = typer.Option(False, "--worker-only", help="Skip registration; only run the worker."),
    pool: str = PoolOption,
    run_once: bool = typer.Option(False, "--run-once", help="The worker runs what is due now, then exits."),
    as_json: bool = JsonOption,
) -> None:
    """Register everything against the configured Prefect server (`prefect deploy --all` underneath).

    The worker runs in the foreground (Ctrl-C stops it) and executes flow runs from schedules,
    triggers and the UI. Server: RAGTUNE_PREFECT__API_URL, or the local stack (`ragtune stack up`).
    """
    from deployments import register as reg
    from deployments.pools import CPU_POOL, GPU_POOL
    from ragtune.commands._common import UserError
    from tasks.settings import get_settings

    if pool not in ("cpu", "gpu"):
        raise UserError(f"--pool must be cpu or gpu, not {pool!r}")
    settings = get_settings()
    if not worker_only:
        emit(reg.register(settings), as_json and not worker, _human)
    if worker or worker_only:
        reg.require_server(settings)
        orchestration = settings.orchestration
        argv = reg.worker_argv(CPU_POOL if pool == "cpu" else GPU_POOL, orchestration.worker_limit, run_once,
                               orchestration.pool_type)
        typer.echo(f"worker: {' '.join(argv[1:])}  (Ctrl-C stops it)", err=True)
        code = subprocess.run(argv, env=reg.prefect_env(settings)).returncode
        if as_json:
            emit({"worker_exit_code": code}, True)
        raise typer.Exit(code)


def _human(result: dict[str, Any]) -> str:
    lines = [f"Prefect API {result['api_url']}  pools: {', '.join(result['pools'])}"]
    for d in result["deployments"]:
        when = ", ".join(d["schedules"] + d["triggers"]) or "on demand"
        lines.append(f"  {d['name']:<20} pool={d['work_pool']:<12} {when}")
    automation = result["failure_automation"]
    lines.append(f"failures -> {automation['notifies']} (automation {automation['id']})")
    lines.append(f"UI: {result['ui_url']}")
    return "\n".join(lines)
