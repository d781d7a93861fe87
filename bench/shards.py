"""Sharded ingestion on process workers: one unsharded run against `--shards 2` on one and on two workers.

    python bench/ingest.py [CORPUS_DIR] --workers 2 [--docs 200]

Starts its own Prefect server and Milvus server (sharded ingestion needs both), registers the
`ingest-documents` deployment and, per arm, fresh process workers; every arm ingests the same
documents (the first ``--docs`` files of the corpus) into a collection of its own:

1. ``unsharded``: `ragtune ingest` as one process (the default path), the baseline;
2. ``shards_1_worker``: ``--shards N`` with one worker (shards run one after another);
3. ``shards_N_workers``: ``--shards N`` with N workers (shards run side by side).

Ratios are the baseline's seconds over each arm's. The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def compare_workers(corpus: Path, data: Path, workers: int, docs: int) -> dict[str, Any]:
    from deployments import register as reg
    from ragtune import stack
    from tasks.settings import Settings

    work = _subset(corpus, data / "corpus", docs)
    port = stack.free_port()
    env = {**os.environ, "RAGTUNE_DATA_DIR": str(data), "RAGTUNE_PREFECT__PORT": str(port),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "RAGTUNE_PREFECT__API_URL": f"http://127.0.0.1:{port}/api",
           "RAGTUNE_MILVUS__SERVER_PORT": str(stack.free_port())}
    os.environ.update(env)
    settings = Settings()
    env["RAGTUNE_MILVUS__URI"] = f"http://127.0.0.1:{settings.milvus.server_port}"
    services = [stack.prefect_server(settings, home=data / "stack"), stack.milvus_server(settings, home=data)]
    _seed_milvus_binaries(data / "milvus" / "bin")
    for service in services:
        stack.start(service)
    try:
        reg.register(settings, names=["ingest-documents"])
        arms = {"unsharded": _timed_ingest(work, "unsharded", 1, env, 0, data),
                "shards_1_worker": _timed_ingest(work, "one", workers, env, 1, data),
                f"shards_{workers}_workers": _timed_ingest(work, "many", workers, env, workers, data)}
    finally:
        for service in reversed(services):
            stack.stop(service)
    base = arms["unsharded"]["seconds"]
    return {"corpus": str(corpus), "documents": docs, "shards": workers, "cpus": os.cpu_count(),
            "arms": arms, **{f"ratio_{name}": round(base / arm["seconds"], 3) for name, arm in arms.items()},
            "load_avg": os.getloadavg()[0]}


def _seed_milvus_binaries(bin_dir: Path) -> None:
    """milvus-server unpacks ~400 MB of LZMA into a fresh data dir (minutes here): reuse the test suite's unpacking."""
    from milvus import __version__

    cache = REPO / ".data" / "cache" / f"milvus-server-bin-{__version__}"
    if cache.is_dir() and not bin_dir.exists():
        shutil.copytree(cache, bin_dir)


def _subset(corpus: Path, target: Path, docs: int) -> Path:
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))[:docs]
    for path in files:
        dest = target / path.relative_to(corpus)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    return target


def _timed_ingest(corpus: Path, collection: str, shards: int, env: dict[str, str], workers: int,
                  data: Path) -> dict[str, Any]:
    """`ragtune ingest` in a fresh process, with ``workers`` process workers running its shards."""
    from deployments import register as reg
    from deployments.pools import CPU_POOL

    procs = [subprocess.Popen(reg.worker_argv(CPU_POOL, limit=1), cwd=REPO, env=env, stdout=log, stderr=log)
             for log in [(data / f"worker-{collection}-{i}.log").open("wb") for i in range(workers)]]
    try:
        argv = [str(Path(sys.executable).parent / "ragtune"), "ingest", str(corpus), "--collection", collection,
                "--shards", str(shards), "--json"]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"ingest {collection} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"seconds": round(seconds, 2), "chunks": report["chunks_written"], "added": report["added"],
              "shard_runs": report["shards"], "chunks_per_s": round(report["chunks_written"] / seconds, 2)}
    print(f"{collection}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result
