"""Register everything against a Prefect server: pools, `prefect.yaml` deployments, the failure automation.

`prefect.yaml` stays the source of truth: the deployments (schedules, triggers, parameters, job
variables) are registered by Prefect's own `prefect deploy --all`, exactly as a user would; this
module only adds what `prefect deploy` cannot (it refuses a work pool that does not exist yet, and
has no place for automations that are not deployment triggers).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tasks.settings import Settings

T = TypeVar("T")
PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"


def api_url(settings: Settings) -> str:
    """The configured server, or the local stack's (`ragtune stack up`)."""
    return settings.prefect.api_url or f"http://127.0.0.1:{settings.prefect.port}/api"


def prefect_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url(settings)}


def on_server(settings: Settings, coro: Coroutine[Any, Any, T]) -> T:
    """Run a Prefect client coroutine against the configured server (not the ephemeral API)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url(settings)}):
        return asyncio.run(coro)


def require_server(settings: Settings) -> None:
    from ragtune.stack import http_ok

    url = api_url(settings)
    if not http_ok(f"{url}/health"):
        raise ConnectionError(f"no Prefect server answers at {url}: run `ragtune stack up` "
                              "or set RAGTUNE_PREFECT__API_URL")


def deploy_all(settings: Settings, project_dir: Path = PROJECT_DIR, names: list[str] | None = None) -> str:
    """`prefect deploy --all` (or `--name` each) from the project root; returns Prefect's output."""
    selection = [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    argv = [str(PREFECT), "--no-prompt", "deploy", *selection, "--prefect-file", str(project_dir / "prefect.yaml")]
    done = subprocess.run(argv, cwd=project_dir, env=prefect_env(settings), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"`prefect deploy` failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def register(settings: Settings, project_dir: Path = PROJECT_DIR, names: list[str] | None = None) -> dict[str, Any]:
    """Pools, then deployments, then the failure automation; returns what the server now holds."""
    from deployments.automations import ensure_failure_automation
    from deployments.pools import ensure_work_pools

    require_server(settings)
    pools = on_server(settings, _with_client(ensure_work_pools, settings.orchestration.pool_type))
    deploy_all(settings, project_dir, names)
    automation = on_server(settings, ensure_failure_automation(settings))
    deployments = on_server(settings, _with_client(read_deployments))
    return {"api_url": api_url(settings), "ui_url": api_url(settings).removesuffix("/api"), "pools": pools,
            "deployments": deployments, "failure_automation": automation}


async def _with_client(func: Any, *args: Any) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await func(client, *args)


async def read_deployments(client: Any) -> list[dict[str, Any]]:
    """The project's deployments as the UI lists them: name, pool, schedules, triggers."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    from deployments.automations import PROJECT_TAG

    tagged = DeploymentFilter(tags=DeploymentFilterTags(all_=[PROJECT_TAG]))
    found = await client.read_deployments(deployment_filter=tagged)
    result = []
    for deployment in sorted(found, key=lambda d: d.name):
        triggers = await client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
        result.append({"name": deployment.name, "id": str(deployment.id), "work_pool": deployment.work_pool_name,
                       "schedules": [_schedule_text(s.schedule) for s in deployment.schedules],
                       "triggers": sorted(a.name for a in triggers)})
    return result


def _schedule_text(schedule: Any) -> str:
    return getattr(schedule, "cron", None) or str(getattr(schedule, "interval", schedule))


def worker_argv(pool: str, limit: int, run_once: bool = False, pool_type: str = "process") -> list[str]:
    return [str(PREFECT), "worker", "start", "--pool", pool, "--type", pool_type, "--limit", str(limit),
            *(["--run-once"] if run_once else [])]
