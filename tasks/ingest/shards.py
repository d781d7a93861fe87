"""Sharded ingestion: the listing split by document id, each shard a flow run of the ingest deployment.

The parent run (``ingest_documents(..., shards=N)``) lists the whole source, applies the deletion guard,
starts one run of ``settings.ingest.shard_deployment`` per shard that has work (through the work pool:
process workers here, Kubernetes jobs at scale), waits for all, and only then deletes the documents
gone from the listing, flushes and reports the sum. A shard run (``shard="i/N"``) indexes the documents
whose id falls in its shard and never deletes: only the parent sees the whole listing.

A shard that fails or crashes is started again alone (primary keys are deterministic, so a re-run after
a partial write never duplicates); after ``settings.ingest.shard_attempts`` the parent fails without
deleting anything. Shards read their parent's results from Prefect's result storage: on one machine
the local default; across machines set ``PREFECT_DEFAULT_RESULT_STORAGE_BLOCK`` to a shared (S3) block.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.ingest.inventory import SourceFile
from tasks.ingest.plan import Run, finish
from tasks.ingest.report import IngestReport
from tasks.settings import IngestSettings, Settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

POLL_S = 2.0
SUMMED = ("added", "updated", "quarantined", "chunks_written", "chunks_reused")  # unchanged: the parent's listing


class ShardingError(RuntimeError):
    """Sharded ingestion cannot start, or a shard failed every attempt (nothing was deleted)."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the documents whose id (hex) modulo ``count`` is ``index``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard | None:
        """``"i/N"`` (the ``shard`` parameter) or None for ``""``."""
        if not text:
            return None
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ShardingError(f"shard must look like 'i/N' (e.g. '0/4'), got {text!r}") from None
        if not 0 <= index < count:
            raise ShardingError(f"shard {text!r}: the index must be in 0..{count - 1}")
        return cls(index, count)

    def holds(self, doc_id: str) -> bool:
        return shard_of(doc_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(doc_id: str, count: int) -> int:
    return int(doc_id[:8], 16) % count


def require_shardable(settings: Settings, shards: int) -> None:
    """Shards are processes writing one collection at once: that needs a Milvus server and a Prefect server."""
    if shards < 1:
        raise ShardingError(f"shards must be at least 1, got {shards}")
    if shards == 1:
        return
    if not settings.milvus.uri:
        raise ShardingError("sharded ingestion needs a Milvus server (RAGTUNE_MILVUS__URI): Milvus Lite is a file "
                            "that one process owns, and shard processes writing it would each see their own copy")
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ShardingError("sharded ingestion runs its shards through a work pool: it needs a Prefect server "
                            "(PREFECT_API_URL; `ragtune stack up`), the deployments (`ragtune deploy`) and a worker")


def shards_with_work(todo: Sequence[SourceFile], count: int) -> list[Shard]:
    """Only shards holding an added or changed document are started (an unchanged corpus starts none)."""
    return [Shard(i, count) for i in sorted({shard_of(f.doc_id, count) for f in todo})]


@task(name="run-shards", cache_policy=NO_CACHE)
def run_shards(ingest: IngestSettings, source: str, generation: str, shards: Sequence[Shard]) -> list[IngestReport]:
    """Start one deployment run per shard, restart the ones that fail, and return their reports."""
    from prefect.deployments import run_deployment

    log = get_run_logger()

    def start(shard: Shard) -> Any:
        params = {"source": source, "collection": generation, "shard": str(shard)}
        flow_run = run_deployment(ingest.shard_deployment, parameters=params, timeout=0, tags=["ragtune-shard"])
        return cast("FlowRun", flow_run).id  # sync context: the call returned the run, not a coroutine

    running = {start(s): (s, 1, time.monotonic()) for s in shards}
    reports: dict[Shard, IngestReport] = {}
    while running:
        time.sleep(POLL_S)
        states = _states(list(running))
        for run_id, (shard, attempt, started) in list(running.items()):
            state = states[run_id]
            if not state.is_final():
                _check_started(state, started, ingest, shard)
                continue
            del running[run_id]
            if state.is_completed():
                reports[shard] = state.result()
                log.info("shard %s done: %d added, %d updated", shard, reports[shard].added, reports[shard].updated)
            elif attempt < ingest.shard_attempts:
                log.warning("shard %s %s (%s): starting it again, attempt %d", shard, state.type.value.lower(),
                            state.message or "no message", attempt + 1)
                running[start(shard)] = (shard, attempt + 1, time.monotonic())
            else:
                raise ShardingError(f"shard {shard} {state.type.value.lower()} in {attempt} attempts "
                                    f"({state.message or 'no message'}); nothing was deleted. Completed shards' "
                                    "writes stay: run the ingestion again to finish the rest.")
    return [reports[s] for s in shards]


def _states(run_ids: list[Any]) -> dict[Any, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
    return {r.id: r.state for r in found}


def _check_started(state: Any, started: float, ingest: IngestSettings, shard: Shard) -> None:
    waiting = state.is_scheduled() or state.is_pending()
    if waiting and time.monotonic() - started > ingest.shard_start_timeout_s:
        raise ShardingError(f"shard {shard} was not picked up in {ingest.shard_start_timeout_s:.0f} s: is a "
                            f"worker running on the pool of {ingest.shard_deployment}? Nothing was deleted.")


def sharded_report(run: Run, shard_reports: Sequence[IngestReport]) -> IngestReport:
    """The parent's report: what the shards indexed, summed; deletions, unchanged and skipped from the parent's
    whole listing; seconds are the parent's wall time (``shards``: waiting for them)."""
    own = finish(run)
    sums = {key: sum(getattr(r, key) for r in shard_reports) for key in SUMMED}
    total = sum(own.seconds.values())
    return own.model_copy(update={
        **sums, "quarantine": [q for r in shard_reports for q in r.quarantine],
        "chunks_per_s": round(sums["chunks_written"] / total, 2) if total else 0.0,
        "embedding": next((r.embedding for r in shard_reports if r.embedding), None), "shards": len(shard_reports)})
