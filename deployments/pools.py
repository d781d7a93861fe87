"""The two work pools `prefect.yaml` names: CPU work, and accelerate fine-tuning on GPU hosts.

Locally both are `process` pools (a worker runs flow runs as subprocesses). On a cluster the same
names are `kubernetes` pools built from the job templates in ``infra/prefect/`` — the deployments
never change, only ``RAGTUNE_ORCHESTRATION__POOL_TYPE``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

INFRA = Path(__file__).resolve().parent.parent / "infra" / "prefect"
CPU_POOL = "ragtune-cpu"
GPU_POOL = "ragtune-gpu"


@dataclass(frozen=True)
class PoolSpec:
    name: str
    description: str
    k8s_template: str


POOLS = (
    PoolSpec(CPU_POOL, "ragtune CPU work: ingestion, dataset builds, CPU fine-tuning, evaluation, promotion.",
             "k8s-cpu-job-template.json"),
    PoolSpec(GPU_POOL, "ragtune fine-tuning with accelerate on GPU hosts (job variables carry the accelerate "
             "config and process count).", "k8s-gpu-job-template.json"),
)


def base_job_template(spec: PoolSpec, pool_type: str) -> dict[str, Any]:
    if pool_type == "kubernetes":
        return json.loads((INFRA / spec.k8s_template).read_text())
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


async def ensure_work_pools(client: PrefectClient, pool_type: str) -> list[str]:
    """Create the pools, or update their template; refuse a pool of another type with the same name."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    for spec in POOLS:
        try:
            existing = await client.read_work_pool(spec.name)
        except ObjectNotFound:
            existing = None
        if existing is not None and existing.type != pool_type:
            raise ValueError(f"work pool {spec.name!r} exists with type {existing.type!r}, settings want "
                             f"{pool_type!r}: delete it (`prefect work-pool delete {spec.name}`) or change "
                             "RAGTUNE_ORCHESTRATION__POOL_TYPE")
        await client.create_work_pool(WorkPoolCreate(
            name=spec.name, type=pool_type, description=spec.description,
            base_job_template=base_job_template(spec, pool_type)), overwrite=True)
    return [spec.name for spec in POOLS]
