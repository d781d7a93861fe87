"""The ingestion steps the flows call: plan (list, diff, guard), index a batch, delete, report.

Crash safety: before a batch writes chunks its documents are recorded as ``pending`` (and
flushed), and only after the chunks are flushed are they recorded as ``indexed``. A run killed
anywhere leaves at worst pending documents, which the next run redoes (or deletes, if gone);
primary keys are deterministic, so redoing never duplicates.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ragtune.settings import Settings
from tasks.chunking import DocInfo, chunk_elements, chunker_settings, load_tokenizer
from tasks.inventory import Diff, Source, SourceFile, content_hash, deletion_refusal, diff_listing
from tasks.milvus import IndexClient
from tasks.models import embedding_source
from tasks.parsing import Element, ParseLimits, ParserPool, default_workers
from tasks.types import Chunk, DocRecord, IndexMeta

LOCK_LEASE_S = 60.0  # the API minimum


class DeletionGuardError(RuntimeError):
    """A listing would delete too much of the index; nothing was deleted."""


@dataclass
class RunStats:
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)
    still_quarantined: int = 0
    chunks_written: int = 0
    chunks_reused: int = 0  # vectors taken from the index instead of re-embedding
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


@dataclass
class Run:
    settings: Settings
    source: Source
    index: IndexClient
    collection: str  # the physical generation written to
    meta: IndexMeta
    workdir: Path
    executor: ThreadPoolExecutor
    stats: RunStats = field(default_factory=RunStats)
    prefetched: dict[tuple[str, ...], _Prepared] = field(default_factory=dict)
    warming: bool = False

    @property
    def pool(self) -> ParserPool:
        """Started lazily (an unchanged re-run never pays for parser processes) and kept for the process:
        a served deployment answers the next event without restarting workers (seconds each)."""
        return parser_pool(self.settings)


def parser_pool(settings: Settings) -> ParserPool:
    ing = settings.ingest
    limits = ParseLimits(ing.parse_timeout_s, ing.parse_memory_mb, ing.max_file_mb, ing.max_unzipped_mb)
    return _shared_pool(limits, default_workers(ing.parse_workers))


def warm_up(settings: Settings) -> None:
    """Load the embedding model and start the parser processes now, before the first event arrives."""
    embedder(settings)
    parser_pool(settings)


@lru_cache(maxsize=2)
def _shared_pool(limits: ParseLimits, workers: int) -> ParserPool:
    pool = ParserPool(workers, limits)
    atexit.register(pool.__exit__, None, None, None)
    return pool


def index_meta(settings: Settings) -> IndexMeta:
    """What this run would build: read from the model's files, without loading the model."""
    source = embedding_source(settings.models.embedding)
    dim = json.loads((source.path / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"]
    return IndexMeta(source.name, int(dim), chunker_settings(settings.ingest.max_tokens, source.name))


@contextlib.contextmanager
def open_run(settings: Settings, source: Source, alias: str, rebuild: bool = False) -> Iterator[Run]:
    """A run writing into the generation ``alias`` serves, or into a new one (``rebuild``; not served
    until promoted)."""
    meta = index_meta(settings)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(IndexClient.from_settings(settings))
        physical = client.create_generation(alias, meta) if rebuild else client.ensure_generation(alias, meta)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ragtune-ingest-")))
        executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="ragtune-parse"))  # one pool user
        yield Run(settings, source, client, physical, meta, workdir, executor)


@lru_cache(maxsize=2)
def _embedder(embedding: str, bf16: bool, threads: int) -> Any:
    from tasks.embedding import Embedder

    settings = Settings(models={"embedding": embedding, "bf16": bf16, "torch_threads": threads})
    return Embedder(settings)


_EMBEDDER_LOCK = threading.Lock()


def embedder(settings: Settings) -> Any:
    """One model load per process (a served deployment reuses it across event-driven runs)."""
    m = settings.models
    with _EMBEDDER_LOCK:  # the first batch warms it in the background while the main thread may ask too
        return _embedder(m.embedding, m.bf16, m.torch_threads)


# --- plan ------------------------------------------------------------------------------------------
def plan(run: Run, force: bool = False) -> Diff:
    with run.stats.timed("list"):
        records = run.index.read_records(run.collection, run.source.uri)
        diff = diff_listing(run.source.list(), records)
    refusal = deletion_refusal(diff, records, run.settings.ingest.deletion_guard)
    if refusal and not force:
        raise DeletionGuardError(f"refusing to run: {refusal}; nothing was deleted. If this is intended, "
                                 "rerun with --force (force=True).")
    run.stats.unchanged = len(diff.unchanged)
    run.stats.still_quarantined = len(diff.still_quarantined)
    return diff


def plan_documents(run: Run, uris: Sequence[str]) -> tuple[list[SourceFile], list[DocRecord]]:
    """For named documents only (event-driven runs): those to (re)index and those gone from the source.

    Cost is per document (a stat and a record lookup), never a listing of the corpus. A document
    whose size and version match its record is skipped: repeated events for one version are free.
    """
    from tasks.types import doc_id_for

    records = run.index.get_records(run.collection, [doc_id_for(u) for u in uris])
    todo, gone = [], []
    with run.stats.timed("list"):
        for uri in dict.fromkeys(uris):
            found = run.source.stat(relative_path(run.source, uri))
            record = records.get(doc_id_for(uri))
            if found is None:
                gone += [record] if record else []
            elif record and (record.size, record.version) == (found.size, found.version) \
                    and record.status != "pending":
                run.stats.unchanged += 1
            else:
                todo.append(found)
    return todo, gone


def source_for(settings: Settings, alias: str, uri: str) -> str:
    """The source a document belongs to: as recorded in the index, else its folder (or bucket)."""
    from tasks.types import doc_id_for

    with IndexClient.from_settings(settings) as index:
        if index.exists(alias) and (found := index.get_records(alias, [doc_id_for(uri)])):
            return next(iter(found.values())).source
    if uri.startswith("s3://"):
        return "s3://" + uri[5:].split("/", 1)[0]
    return uri.rsplit("/", 1)[0]


def relative_path(source: Source, uri: str) -> str:
    from urllib.parse import unquote

    if not uri.startswith(source.uri + "/"):
        raise ValueError(f"document {uri} is not under source {source.uri}")
    rel = uri[len(source.uri) + 1:]
    return unquote(rel) if source.uri.startswith("file:") else rel


# --- one batch of documents ------------------------------------------------------------------------
@dataclass
class _Prepared:
    """A batch read and recorded as pending, its parsing under way in the background."""

    known: dict[str, DocRecord]
    records: list[DocRecord]  # final records needing no parse: touched files, unreadable files
    failed: list[str]  # documents quarantined in this batch (their old chunks leave the index)
    parsed: Future[list[tuple[SourceFile, str, list[Element] | str]]] | None


@task(name="index-batch", cache_policy=NO_CACHE)
def index_batch(run: Run, files: Sequence[SourceFile], upcoming: Sequence[SourceFile] = ()) -> None:
    """Parse, chunk, embed and write a batch of documents (one task: bookkeeping is per batch).

    ``upcoming`` (the next batch) starts parsing in the parser processes while this batch embeds.
    """
    prep = run.prefetched.pop(_key(files), None) or _prepare(run, files)
    if upcoming:
        run.prefetched[_key(upcoming)] = _prepare(run, upcoming)
    parsed: dict[str, tuple[SourceFile, str, list[Element]]] = {}
    with run.stats.timed("parse_wait"):
        for f, digest, result in prep.parsed.result() if prep.parsed else []:
            if isinstance(result, str):
                prep.records.append(_quarantine(run, f, digest, result))
                prep.failed.append(f.doc_id)
            else:
                parsed[f.doc_id] = (f, digest, result)
    with run.stats.timed("chunk"):
        tokenizer = load_tokenizer(str(embedding_source(run.settings.models.embedding).path))
        chunks = {d: chunk_elements(els, _doc_info(f, h), tokenizer, run.settings.ingest.max_tokens)
                  for d, (f, h, els) in parsed.items()}
    flat = [c for cs in chunks.values() for c in cs]
    vectors = _vectors(run, flat, [d for d in chunks if d in prep.known]) if flat else None
    with run.stats.timed("write"):
        if flat:
            run.index.upsert_chunks(run.collection, flat, vectors)
        run.index.delete_documents(run.collection, prep.failed)  # a document that turned bad leaves the index
        run.index.flush(run.collection)
    for doc_id, (f, digest, _) in parsed.items():
        prep.records.append(_record(f, digest, "indexed", len(chunks[doc_id])))
        _count_write(run.stats, f, prep.known)
    run.index.write_records(run.collection, prep.records)
    run.stats.chunks_written += len(flat)


def _key(files: Sequence[SourceFile]) -> tuple[str, ...]:
    return tuple(f.doc_id for f in files)


def _prepare(run: Run, files: Sequence[SourceFile]) -> _Prepared:
    """Read the files, record the ones to parse as pending (write-ahead, flushed), start their parsing."""
    known = run.index.get_records(run.collection, [f.doc_id for f in files])
    prep = _Prepared(known, [], [], None)
    todo = _read(run, files, prep)
    if todo:
        run.index.write_records(run.collection, [_record(f, h, "pending") for f, _, h in todo])
        run.index.flush_records(run.collection)
        prep.parsed = run.executor.submit(_parse, run, todo)
        if not run.warming:  # the first batch: load the model while its documents parse
            run.warming = True
            threading.Thread(target=embedder, args=(run.settings,), daemon=True).start()
    return prep


def _read(run: Run, files: Sequence[SourceFile], prep: _Prepared) -> list[tuple[SourceFile, Path, str]]:
    """Files to parse (saved under the workdir); records for the others go into ``prep``."""
    todo = []
    with run.stats.timed("read"):
        for f in files:
            try:
                data = run.source.read(f)
            except Exception as exc:  # an unreadable file is quarantined; the run goes on
                prep.records.append(_quarantine(run, f, "", f"cannot read: {type(exc).__name__}: {exc}"))
                prep.failed.append(f.doc_id)
                continue
            digest = content_hash(data)
            old = prep.known.get(f.doc_id)
            if old is not None and old.content_hash == digest and old.status in ("indexed", "quarantined"):
                prep.records.append(_replace(old, f))  # touched, not changed: remember the new version only
                run.stats.unchanged += old.status == "indexed"
                run.stats.still_quarantined += old.status == "quarantined"
                continue
            path = run.workdir / f"{f.doc_id}{f.suffix}"  # never the source's own name: no traversal
            path.write_bytes(data)
            todo.append((f, path, digest))
    return todo


def _parse(run: Run, todo: list[tuple[SourceFile, Path, str]]) -> list[tuple[SourceFile, str, list[Element] | str]]:
    """Runs in the background thread: the work happens in the parser processes, this only waits."""
    by_key = {f.doc_id: (f, path, digest) for f, path, digest in todo}
    out: list[tuple[SourceFile, str, list[Element] | str]] = []
    start = time.perf_counter()
    for key, result in run.pool.parse([(f.doc_id, path, f.suffix) for f, path, _ in todo]):
        f, path, digest = by_key[key]
        path.unlink(missing_ok=True)
        out.append((f, digest, result))
    run.stats.seconds["parse"] += time.perf_counter() - start
    return out


def _vectors(run: Run, chunks: list[Chunk], indexed_docs: list[str]) -> Any:
    """Vectors for chunks: reused from the index when the text is already there, else embedded."""
    import numpy as np

    with run.stats.timed("embed"):
        known = run.index.vectors_by_text(run.collection, indexed_docs) if indexed_docs else {}
        texts = sorted({c.text for c in chunks if c.text not in known})
        fresh = embedder(run.settings).encode(texts, run.settings.ingest.embed_batch_size) if texts else []
        by_text = {**known, **dict(zip(texts, fresh, strict=True))}
        run.stats.chunks_reused += sum(1 for c in chunks if c.text in known)
        return np.asarray([by_text[c.text] for c in chunks], dtype=np.float32).reshape(len(chunks), run.meta.dim)


# --- deletion, finishing, reporting ---------------------------------------------------------------
@task(name="delete-removed", cache_policy=NO_CACHE)
def delete_removed(run: Run, removed: Sequence[DocRecord]) -> int:
    """Chunks first, then records: a crash in between leaves records that the next run deletes again."""
    ids = [r.doc_id for r in removed]
    with run.stats.timed("write"):
        run.index.delete_documents(run.collection, ids)
        run.index.flush(run.collection)
        run.index.delete_records(run.collection, ids)
    run.stats.deleted += sum(1 for r in removed if r.status == "indexed")
    return len(ids)


def finish(run: Run) -> dict[str, Any]:
    """Flush (Milvus Lite searches unflushed rows by brute force) and summarise the run."""
    with run.stats.timed("flush"):
        run.index.flush(run.collection)
        run.index.flush_records(run.collection)
    s = run.stats
    total = sum(v for k, v in s.seconds.items() if k != "total")
    emb = _embedder.cache_info().currsize and embedder(run.settings)
    return {
        "source": run.source.uri, "collection": run.collection, "added": s.added, "updated": s.updated,
        "deleted": s.deleted, "unchanged": s.unchanged, "quarantined": len(s.quarantined),
        "quarantine": s.quarantined, "still_quarantined": s.still_quarantined, "chunks_written": s.chunks_written,
        "chunks_reused": s.chunks_reused, "seconds": {k: round(v, 3) for k, v in s.seconds.items()},
        "chunks_per_s": round(s.chunks_written / total, 2) if total else 0.0,
        "embedding": {"bf16": emb.bf16, "threads": emb.threads, "calibration": emb.calibration} if emb else None,
    }


def batched(items: Sequence[SourceFile], size: int) -> Iterator[list[SourceFile]]:
    """Batches growing 4, 8, 16... up to ``size``: the first embed starts after a short first parse."""
    start, step = 0, min(4, max(1, size))
    while start < len(items):
        yield list(items[start:start + step])
        start, step = start + step, min(step * 2, max(1, size))


def _doc_info(f: SourceFile, digest: str) -> DocInfo:
    return DocInfo(f.doc_id, f.uri, f.path, digest, Path(f.path).stem)


def _record(f: SourceFile, digest: str, status: str, chunks: int = 0, reason: str = "") -> DocRecord:
    return DocRecord(f.doc_id, f.uri, f.source, f.path, f.size, f.version, digest, chunks, status, reason)


def _replace(old: DocRecord, f: SourceFile) -> DocRecord:
    return DocRecord(old.doc_id, f.uri, f.source, f.path, f.size, f.version, old.content_hash,
                     old.chunk_count, old.status, old.reason)


def _quarantine(run: Run, f: SourceFile, digest: str, reason: str) -> DocRecord:
    run.stats.quarantined.append({"uri": f.uri, "reason": reason, "doc_id": f.doc_id})
    return _record(f, digest, "quarantined", reason=reason)


def _count_write(stats: RunStats, f: SourceFile, known: dict[str, DocRecord]) -> None:
    if f.doc_id in known and known[f.doc_id].status != "pending":
        stats.updated += 1
    else:
        stats.added += 1


@contextlib.contextmanager
def collection_lock(collection: str) -> Iterator[None]:
    """Two runs on one collection never interleave: a Prefect global concurrency limit of 1 per name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = f"ragtune-ingest-{collection}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    # A short lease (renewed while the run lives): a killed run blocks the next one for seconds, not minutes.
    with concurrency(name, occupy=1, strict=True, lease_duration=LOCK_LEASE_S):
        yield
