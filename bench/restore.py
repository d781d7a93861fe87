"""Restoring an index snapshot into a Milvus 2.3 server: Milvus' bulk import beside inserts through the client.

    python bench/restore.py [--rows 20000] [--shard-rows 5000]

Both load the very same Parquet shards (synthetic rows: 384-d random unit vectors, ~60-word texts,
the snapshot schema) into fresh generations of one server started for the run, each until its
count(*) answers every row; inserts first, then bulk (``tasks.release.snapshot.bulk_load``: stage into the
server's storage, one import task per shard, reload). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragtune import stack  # noqa: E402
from tasks.release.snapshot import _insert_shards, bulk_load, chunk_schema  # noqa: E402
from tasks.settings import Settings  # noqa: E402
from tasks.stores.milvus import IndexClient  # noqa: E402
from tasks.types import IndexMeta  # noqa: E402

DIM = 384
REPO = Path(__file__).resolve().parent.parent


def write_shards(out: Path, rows: int, shard_rows: int) -> list[Path]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    shards = []
    for start in range(0, rows, shard_rows):
        n = min(shard_rows, rows - start)
        vectors = rng.standard_normal((n, DIM)).astype("float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        table = pa.Table.from_pylist([
            {"id": f"c{start + i:08d}", "doc_id": f"d{(start + i) // 4:07d}", "uri": f"bench://{(start + i) // 4}",
             "path": f"{(start + i) // 4}.md", "title": "", "section": "", "element_types": "NarrativeText",
             "doc_hash": "h", "text": " ".join(rng.choice(words, 60)), "page": 0, "chunk_index": (start + i) % 4,
             "vector": vectors[i].tolist()} for i in range(n)], schema=chunk_schema(DIM))
        shards.append(out / f"part-{len(shards):05d}.parquet")
        pq.write_table(table, shards[-1])
    return shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--shard-rows", type=int, default=5_000)
    args = parser.parse_args()
    if stack.port_open(9091):
        print(json.dumps({"bench": "restore", "skipped": "port 9091 is taken: another Milvus server runs here"}))
        return
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        home = Path(tmp)
        shards = write_shards(home, args.rows, args.shard_rows)
        settings = Settings(data_dir=home)
        settings.milvus.server_port = stack.free_port()
        service = stack.milvus_server(settings, home=home / "server")
        cached = REPO / ".data" / "cache" / "milvus-server-bin-2.3.5"  # unpacked by the test fixture
        if cached.is_dir():
            shutil.copytree(cached, home / "server" / "milvus" / "bin")
        from tests.conftest import wait_for_metrics_port

        wait_for_metrics_port()  # a Milvus stopped < 1 min ago leaves 9091 in TIME_WAIT
        stack.start(service)
        try:
            with IndexClient(f"http://127.0.0.1:{settings.milvus.server_port}") as server:
                meta = IndexMeta("bench", DIM, {})
                timings = {}
                for way in ("insert", "bulk"):
                    name = server.create_generation(way, meta)
                    started = time.perf_counter()
                    if way == "insert":
                        _insert_shards(server, name, shards)
                        server.flush(name)
                    else:
                        bulk_load(server, name, shards, home / "server" / "milvus" / "data")
                    while server.count(name) < args.rows:
                        time.sleep(0.2)
                    timings[way] = time.perf_counter() - started
        finally:
            stack.stop(service)
    print(json.dumps({"bench": "restore", "server": "milvus 2.3.5 standalone", "rows": args.rows, "dim": DIM,
                      "shards": len(shards), "insert_s": round(timings["insert"], 2),
                      "bulk_s": round(timings["bulk"], 2),
                      "bulk_vs_insert": round(timings["bulk"] / timings["insert"], 3)}))


if __name__ == "__main__":
    main()
