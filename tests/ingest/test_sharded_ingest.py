"""Sharded ingestion on a real Prefect server with two process workers and a real Milvus server.

The parent run lives in this process (as `ragtune ingest --shards 2` runs it); its shards are runs of the
`ingest-documents` deployment that the two workers pick up and run as subprocesses from this checkout.
"""

from __future__ import annotations

import contextvars
import functools
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments import register as reg
from deployments.pools import CPU_POOL
from tasks.settings import Settings
from tasks.stores.milvus import IndexClient
from tests.conftest import prefect_server

pytestmark = pytest.mark.integration
TOPICS = ["herons", "otters", "beavers", "lynxes", "ibexes", "walruses", "okapis", "tapirs", "quokkas", "narwhals",
          "pangolins", "axolotls"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, milvus_server: str) -> Iterator[Settings]:
    """A Prefect server, the ingest deployment registered, two process workers; all on the Milvus server."""
    home = tmp_path_factory.mktemp("sharded")
    env = {"RAGTUNE_MILVUS__URI": milvus_server, "RAGTUNE_MODELS__BF16": "false", "RAGTUNE_INGEST__PARSE_WORKERS": "1",
           "RAGTUNE_INGEST__BATCH_DOCS": "2",
           # fp32 PyTorch: int8 ONNX scales activations per batch, so a text's vector depends on its batch-mates
           "RAGTUNE_MODELS__EMBEDDING_BACKEND": "torch"}
    # The module's flows (the parent runs here) talk to this server, not to the session's test harness.
    with prefect_server(home, model_cache, env) as settings:
        workers: list[subprocess.Popen[bytes]] = []
        try:
            reg.register(settings, names=["ingest-documents"])
            reg.on_server(settings, _without_schedules("ingest-documents/ingest-documents"))
            for i in range(2):
                log = (home / f"worker-{i}.log").open("wb")
                workers.append(subprocess.Popen(reg.worker_argv(CPU_POOL, limit=2), cwd=reg.PROJECT_DIR,
                                                env=reg.prefect_env(settings), stdout=log, stderr=subprocess.STDOUT))
            yield settings
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGINT)
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()


async def _without_schedules(name: str) -> None:
    """The hourly schedule off and its runs deleted: the workers run only this module's shards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        for schedule in await client.read_deployment_schedules(deployment.id):
            await client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        for run in await client.read_flow_runs(deployment_filter=only):
            await client.delete_flow_run(run.id)


def write_corpus(root: Path, topics: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for topic in topics:
        (root / f"{topic}.md").write_text(f"# {topic.title()}\n\nThe {topic} of the northern valley gather at dusk "
                                          f"near the river; field notes on {topic} behaviour follow.\n")
    return root


def rows(settings: Settings, alias: str) -> dict[str, np.ndarray]:
    """Chunk id -> vector, every row of the generation ``alias`` serves."""
    with IndexClient.from_settings(settings) as index:
        return {r["id"]: np.asarray(r["vector"], dtype=np.float32)
                for batch in index.iter_rows(alias, fields=["id", "vector"]) for r in batch}


def test_two_shards_build_the_collection_one_run_builds(cluster: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents

    docs = write_corpus(tmp_path / "docs", TOPICS)
    plain = ingest_documents(str(docs), "plain")
    sharded = ingest_documents(str(docs), "sharded", shards=2)

    assert sharded.shards == 2  # 12 documents: both shards hold some
    for key in ("added", "updated", "deleted", "quarantined", "chunks_written"):
        assert getattr(sharded, key) == getattr(plain, key), key
    assert sharded.added == len(TOPICS)
    expected, got = rows(cluster, "plain"), rows(cluster, "sharded")
    assert set(got) == set(expected) and len(got) >= len(TOPICS)
    for chunk_id, vector in expected.items():
        np.testing.assert_allclose(got[chunk_id], vector, atol=1e-5)

    (docs / "otters.md").unlink()
    (docs / "herons.md").write_text("# Herons\n\nHerons stand still in the shallows for hours.\n")
    again = ingest_documents(str(docs), "sharded", shards=2)
    assert (again.added, again.updated, again.deleted, again.unchanged) == (0, 1, 1, len(TOPICS) - 2)
    assert again.shards == 1  # only the changed document's shard ran
    assert ingest_documents(str(docs), "sharded", shards=2).shards == 0  # nothing changed: no shard run at all

    rebuilt = ingest_documents(str(docs), "sharded", rebuild=True, shards=2)
    assert (rebuilt.collection, rebuilt.added, rebuilt.shards) == ("sharded__g2", len(TOPICS) - 1, 2)
    with IndexClient.from_settings(cluster) as index:
        assert index.resolve("sharded") == "sharded__g1"  # the rebuild is served only after promotion
        assert index.count("sharded__g2") == index.count("sharded__g1")


def test_a_killed_shard_runs_again_alone_and_duplicates_nothing(cluster: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents

    docs = write_corpus(tmp_path / "docs", [f"{t}{n}" for t in TOPICS for n in range(3)])
    result: dict[str, Any] = {}
    context = contextvars.copy_context()  # the parent thread runs with this thread's Prefect settings

    def parent_run() -> None:
        try:
            result["report"] = context.run(functools.partial(ingest_documents, str(docs), "killed", shards=2))
        except BaseException as exc:  # noqa: BLE001 - shown by the assertion below
            result["error"] = exc

    parent = threading.Thread(target=parent_run)
    parent.start()
    killed = _kill_a_shard_mid_write(cluster, "killed", parent.is_alive, timeout_s=240)
    parent.join(timeout=600)

    assert "report" in result, result.get("error")
    assert killed is not None, "no shard run was caught writing"
    report = result["report"]
    assert (report.added, report.shards) == (3 * len(TOPICS), 2)
    with IndexClient.from_settings(cluster) as index:
        records = index.read_records("killed")
        assert sorted({r.status for r in records.values()}) == ["indexed"]
        assert index.count("killed") == sum(r.chunk_count for r in records.values()) == report.chunks_written
    runs = _shard_runs(cluster, "killed")
    assert killed in {r.id for r in runs if r.state.is_crashed()}
    assert len(runs) == 3  # 2 shards + the killed one's re-run


def _kill_a_shard_mid_write(settings: Settings, alias: str, parent_alive: Callable[[], bool], timeout_s: float) -> Any:
    """SIGKILL the process of the first shard run that has recorded a document (it is writing); its run id."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and parent_alive():
        with IndexClient.from_settings(settings) as index:
            written = index.exists(alias) and bool(index.read_records(alias))
        running = [r for r in _shard_runs(settings, alias) if r.state.is_running()]
        if written and running:
            target = str(running[0].id)
            for proc in psutil.process_iter(["pid"]):
                try:
                    if proc.environ().get("PREFECT__FLOW_RUN_ID") == target:
                        proc.kill()
                        return running[0].id
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        time.sleep(0.2)
    return None  # the parent ended, or no shard run was caught writing in time


def _shard_runs(settings: Settings, alias: str) -> list[Any]:
    """Shard runs writing a generation of ``alias``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async def call() -> Any:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            shard_runs = FlowRunFilter(tags=FlowRunFilterTags(all_=["ragtune-shard"]))
            return await client.read_flow_runs(flow_run_filter=shard_runs)

    return [r for r in reg.on_server(settings, call()) if r.parameters["collection"].startswith(f"{alias}__g")]
