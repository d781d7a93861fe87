"""Index snapshots: a collection generation as Parquet shards + ``schema.json`` on S3, and back.

``indexes/<generation>/<snapshot_id>/`` holds ``part-NNNNN.parquet`` (the chunk rows: id, doc_id,
vector, text, metadata — the column names are the collection's field names, the layout Milvus' bulk
import reads, so a cluster can load the shards straight from S3), ``records.parquet`` (the index's
per-document record, so incremental ingestion continues after a restore) and ``schema.json`` (the
IndexMeta, columns, shard list, row count). The snapshot id is a hash of that content, so exporting
an unchanged generation again writes nothing new.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.release.manifest import IndexSnapshot, StoredFile, verify_stored
from tasks.release.publish import describe_files, download_files, upload_files
from tasks.stores.milvus import IndexClient
from tasks.stores.s3 import S3Store
from tasks.types import METADATA_FIELDS, DocRecord, IndexMeta

SCHEMA_FILE = "schema.json"
RECORDS_FILE = "records.parquet"
_INT_FIELDS = {"page", "chunk_index"}
BULK_STAGE = "ragtune-import"  # under a server's import folder: where restore --bulk-dir stages shards


class SnapshotError(RuntimeError):
    """A snapshot cannot be written or restored; the message says why."""


@dataclass(frozen=True)
class LocalSnapshot:
    generation: str
    snapshot_id: str
    directory: Path
    rows: int
    names: list[str]


@dataclass(frozen=True)
class RestoreResult:
    collection: str
    alias: str | None
    rows: int


def chunk_schema(dim: int) -> pa.Schema:
    text_fields = [f for f in ("id", "doc_id", "text", *METADATA_FIELDS) if f not in _INT_FIELDS]
    return pa.schema([*(pa.field(f, pa.string()) for f in text_fields),
                      *(pa.field(f, pa.int64()) for f in sorted(_INT_FIELDS)),
                      # A variable-length list, not FixedSizeList(dim): Milvus' Parquet import refuses
                      # FixedSizeList vectors ("file field dataType:fixed_size_list", 2.3.5 here; accepted
                      # only since milvus-io/milvus#49683, 2026).
                      pa.field("vector", pa.list_(pa.float32()))])


def export_snapshot(client: IndexClient, collection: str, work_dir: Path, rows_per_shard: int) -> LocalSnapshot:
    """Write every row of ``collection`` (alias or generation) to local Parquet shards + schema.json."""
    generation = client.resolve(collection)
    meta = client.index_meta(generation) if generation else None
    if generation is None or meta is None:
        raise SnapshotError(f"no ragtune collection {collection!r} at {client.uri} to snapshot")
    out = work_dir / f"{generation}.export"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    schema = chunk_schema(meta.dim)
    shards, rows = _write_shards(client, generation, out, schema, rows_per_shard)
    records = [asdict(r) for r in client.read_records(generation).values()]
    pq.write_table(pa.Table.from_pylist(records, schema=_record_schema()), out / RECORDS_FILE)
    described = {"format": 1, "generation": generation, "meta": asdict(meta), "rows": rows, "shards": shards,
                 "records": {"file": RECORDS_FILE, "rows": len(records)}, "columns": schema.names}
    (out / SCHEMA_FILE).write_text(json.dumps(described, indent=2, sort_keys=True))
    names = [*(s["file"] for s in shards), RECORDS_FILE, SCHEMA_FILE]
    digest = hashlib.sha256(b"".join(_file_digest(out / n) for n in names)).hexdigest()[:16]
    return LocalSnapshot(generation, f"snap-{digest}", out, rows, names)


def _write_shards(client: IndexClient, generation: str, out: Path, schema: pa.Schema,
                  rows_per_shard: int) -> tuple[list[dict[str, Any]], int]:
    shards: list[dict[str, Any]] = []
    writer: pq.ParquetWriter | None = None
    for batch in client.iter_rows(generation, batch_size=1000):
        while batch:
            if writer is None or shards[-1]["rows"] >= rows_per_shard:
                if writer is not None:
                    writer.close()
                shards.append({"file": f"part-{len(shards):05d}.parquet", "rows": 0})
                writer = pq.ParquetWriter(out / shards[-1]["file"], schema)
            piece, batch = batch[:rows_per_shard - shards[-1]["rows"]], batch[rows_per_shard - shards[-1]["rows"]:]
            writer.write_table(pa.Table.from_pylist([_row(r) for r in piece], schema=schema))
            shards[-1]["rows"] += len(piece)
    if writer is not None:
        writer.close()
    return shards, sum(s["rows"] for s in shards)


def _row(r: dict[str, Any]) -> dict[str, Any]:
    row = {k: r.get(k) for k in ("id", "doc_id", "text", *METADATA_FIELDS)}
    for key in _INT_FIELDS:
        row[key] = int(row.get(key) or 0)
    row["vector"] = [float(x) for x in r["vector"]]
    return row


def _record_schema() -> pa.Schema:
    types = {"size": pa.int64(), "chunk_count": pa.int64(), "updated_at": pa.float64()}
    return pa.schema([pa.field(name, types.get(name, pa.string())) for name in DocRecord.__dataclass_fields__])


def _file_digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def upload_snapshot(store: S3Store, snapshot: LocalSnapshot) -> IndexSnapshot:
    prefix = f"indexes/{snapshot.generation}/{snapshot.snapshot_id}"
    report = upload_files(store, prefix, describe_files(store, snapshot.directory, snapshot.names))
    return IndexSnapshot(snapshot_id=snapshot.snapshot_id, prefix=prefix, rows=snapshot.rows, files=report.files)


def restore_snapshot(store: S3Store, snapshot: IndexSnapshot, client: IndexClient, work_dir: Path,
                     alias: str, name: str | None = None, serve: bool = False,
                     bulk_dir: Path | None = None, bulk_bucket: S3Store | None = None) -> RestoreResult:
    """Rebuild a generation from S3 alone (every file verified by sha256) into ``client``'s Milvus.

    Milvus' bulk import instead of inserts through the client, for a server: ``bulk_dir``, a folder it
    reads import files from (a standalone's ``localStorage.path``): the shards are staged there;
    ``bulk_bucket``, the bucket it stores its data in (a cluster's MinIO/S3, same endpoint as ``store``):
    the shards are copied there server side, never downloaded, and imported by key.
    """
    remote = [f for f in snapshot.files if _is_shard(f.key)] if bulk_bucket is not None else []
    fetch = [f for f in snapshot.files if f not in remote]
    local = download_files(store, fetch, snapshot.prefix, work_dir / snapshot.snapshot_id)
    described = json.loads((local / SCHEMA_FILE).read_text())
    name = name or described["generation"]
    if client.resolve(name) is not None:
        raise SnapshotError(f"{name} already exists at {client.uri}: drop it or restore under another name")
    meta = IndexMeta(**{k: v for k, v in described["meta"].items() if k in IndexMeta.__dataclass_fields__})
    client.create_generation(alias, meta, name=name)
    shards = [local / shard["file"] for shard in described["shards"]]
    try:
        if bulk_bucket is not None:
            bulk_load_s3(client, name, store, remote, bulk_bucket)
        elif bulk_dir is not None:
            bulk_load(client, name, shards, bulk_dir)
        else:
            _insert_shards(client, name, shards)
        records = pq.read_table(local / described["records"]["file"]).to_pylist()
        client.write_records(name, [DocRecord(**r) for r in records])
        client.flush(name)
        client.flush_records(name)
        restored = client.count(name)
        if restored != described["rows"]:
            raise SnapshotError(f"restored {restored} rows into {name}, the snapshot holds {described['rows']}")
    except Exception:
        client.drop_collection(name)  # nothing half-restored is left behind
        raise
    if serve:
        client.set_alias(alias, name)
    return RestoreResult(collection=name, alias=alias if serve else None, rows=restored)


def _insert_shards(client: IndexClient, name: str, shards: list[Path]) -> None:
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=1000):
            client.insert_rows(name, batch.to_pylist())


def bulk_load(client: IndexClient, collection: str, shards: list[Path], bulk_dir: Path) -> int:
    """Stage the shards where the server reads them and bulk-import them; staged copies are removed after."""
    stage = bulk_dir / BULK_STAGE / collection
    stage.mkdir(parents=True, exist_ok=True)
    try:
        staged = [stage_shard(shard, stage / shard.name) for shard in shards]
        # Absolute paths: a standalone with local storage stats the path as given (relative: against its cwd).
        return client.bulk_import(collection, [str(p.resolve()) for p in staged])
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def bulk_load_s3(client: IndexClient, collection: str, store: S3Store, shards: list[StoredFile],
                 bucket: S3Store) -> int:
    """Copy the shards (proven first) into the bucket Milvus reads, import them by key, remove the copies.

    Milvus takes import paths relative to its bucket's root. Shards written with FixedSizeList vectors
    (older snapshots) are refused by Milvus with that reason: restore those with inserts or ``bulk_dir``.
    """
    problems = verify_stored(store, shards)
    if problems:
        raise SnapshotError("snapshot shards do not verify on S3: " + "; ".join(problems))
    staged: list[str] = []
    try:
        for shard in shards:
            staged.append(f"{BULK_STAGE}/{collection}/{shard.key.rsplit('/', 1)[-1]}")
            store.copy_to(shard.key, bucket, staged[-1])
        return client.bulk_import(collection, [bucket.key(k) for k in staged])
    finally:
        if staged:
            bucket.delete(staged)


def _is_shard(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith("part-") and name.endswith(".parquet")


def stage_shard(source: Path, dest: Path) -> Path:
    """A copy of a shard that Milvus' Parquet import reads: a snapshot written with FixedSizeList vectors
    (before variable-length lists were used) is rewritten; any other is copied as is."""
    if pa.types.is_fixed_size_list(pq.read_schema(source).field("vector").type):
        table = pq.read_table(source)
        vectors = table.column("vector").cast(pa.list_(pa.float32()))
        pq.write_table(table.set_column(table.schema.get_field_index("vector"), "vector", vectors), dest)
    else:
        shutil.copyfile(source, dest)
    return dest
