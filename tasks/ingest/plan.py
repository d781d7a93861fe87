"""The ingestion run: plan (list, diff, guard), delete, finish and report; batches are in tasks.ingest.batch.

Crash safety: before a batch writes chunks its documents are recorded as ``pending`` (and
flushed), and only after the chunks are flushed are they recorded as ``indexed``. A run killed
anywhere leaves at worst pending documents, which the next run redoes (or deletes, if gone);
primary keys are deterministic, so redoing never duplicates.
"""

from __future__ import annotations

import atexit
import contextlib
import tempfile
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.ingest.chunking import chunker_settings
from tasks.ingest.inventory import Diff, Source, SourceFile, deletion_refusal, diff_listing
from tasks.ingest.parser_pool import ParserPool, default_workers
from tasks.ingest.parsing import ParseLimits
from tasks.ingest.report import EmbeddingStats, IngestReport, QuarantinedFile
from tasks.runtime.loading import declared_dimension
from tasks.runtime.sources import embedding_source
from tasks.runtime.torch_thread import torch_pool
from tasks.settings import IngestSettings, Settings
from tasks.stores.milvus import IndexClient
from tasks.types import DocRecord, IndexMeta

if TYPE_CHECKING:
    from tasks.ingest.shards import Shard  # which imports this module

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
    skipped: dict[str, int] = field(default_factory=dict)  # source entries left out on purpose, by reason
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
    workdir: Path
    executor: ThreadPoolExecutor
    loading: Future[IndexMeta] | None = None  # the embedder loading on the torch thread (``load_model``)
    stats: RunStats = field(default_factory=RunStats)
    prefetched: dict[tuple[str, ...], Any] = field(default_factory=dict)  # tasks.ingest.batch.Prepared by batch
    warming: bool = False
    _meta: IndexMeta | None = field(default=None, init=False, repr=False)  # once checked (``meta``)

    @property
    def meta(self) -> IndexMeta:
        """What this run writes: the loaded embedder's meta (waited for on first use), checked against the
        collection's. ``open_run`` checked only what the model folder declares; this check keeps a wrong
        forecast from ever writing a vector."""
        if self._meta is None:
            meta = self.load_model().result()
            self.index.check_meta(self.collection, meta)
            self._meta = meta
        return self._meta

    def load_model(self) -> Future[IndexMeta]:
        """Start loading the embedding model on the torch thread (once): only a run with something to embed
        pays for it; an unchanged re-run never loads it."""
        if self.loading is None:
            self.loading = torch_pool().submit(index_meta, self.settings)
        return self.loading


def parser_pool(ing: IngestSettings, documents: int = 0) -> ParserPool:
    """The process's parser pool: started lazily (an unchanged re-run never pays for parser processes)
    and kept for the process (a served deployment answers the next event without restarting workers).
    First use starts ``default_workers`` (one per free core but the embedder's), or fewer when it has fewer
    documents: a one-document event in a cold process should not spend a core importing a parser that gets no
    file."""
    limits = ParseLimits(ing.parse_timeout_s, ing.parse_memory_mb, ing.max_file_mb, ing.max_unzipped_mb)
    key = (limits, ing.packaged_spacy, ing.batch_nlp, ing.rst_reader)
    with _POOLS_LOCK:
        if key not in _POOLS:
            workers = default_workers(ing.parse_workers)
            _POOLS[key] = pool = ParserPool(min(workers, documents) if documents else workers, limits,
                                            ing.packaged_spacy, ing.batch_nlp, ing.rst_reader)
            atexit.register(pool.__exit__, None, None, None)
        return _POOLS[key]


def _start_parsers(ing: IngestSettings, documents: int) -> None:
    """Start the process's parser pool in the background, now: a cold start imports the parsers for seconds,
    which the run spends loading the model instead. A start that fails here is retried, and reported, by the
    batch's own ``parser_pool`` call."""
    def start() -> None:
        with contextlib.suppress(Exception):
            parser_pool(ing, documents)

    threading.Thread(target=start, name="ragtune-parsers", daemon=True).start()


def warm_up(settings: Settings) -> None:
    """Load the embedding model and start the parser processes now, before the first event arrives."""
    embedder(settings)
    parser_pool(settings.ingest)


_POOLS: dict[tuple[ParseLimits, bool, bool, str], ParserPool] = {}
_POOLS_LOCK = threading.Lock()


def index_meta(settings: Settings) -> IndexMeta:
    """What this run would build: the model, its dimension and how this process embeds (loads the embedder)."""
    source = embedding_source(settings.models.embedding)
    emb = embedder(settings)
    chunker = chunker_settings(settings.ingest.max_tokens, source.name, settings.ingest.overlap_tokens)
    return IndexMeta(source.name, emb.dim, chunker, embedding_backend=emb.backend, embedding_precision=emb.precision)


def declared_meta(settings: Settings) -> IndexMeta | None:
    """What the model folder says this run would write (model, dimension, chunker), read without loading the
    model; None where its config does not say. Enough to check an existing collection: how the model runs
    (backend, precision) never makes it incompatible (``IndexMeta.encoder_mismatch``)."""
    source = embedding_source(settings.models.embedding)
    dim = declared_dimension(source.path)
    chunker = chunker_settings(settings.ingest.max_tokens, source.name, settings.ingest.overlap_tokens)
    return IndexMeta(source.name, dim, chunker) if dim else None


@contextlib.contextmanager
def open_run(settings: Settings, source: Source, alias: str, rebuild: bool = False) -> Iterator[Run]:
    """A run writing into the generation ``alias`` serves, or into a new one (``rebuild``; not served
    until promoted).

    The embedding model loads only once the run has something to embed (``Run.load_model``), on the torch
    thread (seconds in a cold process: an event's parser processes start and its document parses in that
    time). A new generation waits for it here (its schema needs the dimension, its meta the backend); an
    existing one is checked now against the model folder's declared meta, and against the loaded model's
    before vectors are written (``Run.meta``).
    """
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(IndexClient.from_settings(settings))
        physical = None if rebuild else client.resolve(alias)
        loading = None
        if physical and (declared := declared_meta(settings)):
            client.check_meta(physical, declared)  # another model is refused now, before anything is written
        else:
            loading = torch_pool().submit(index_meta, settings)
            meta = loading.result()
            physical = client.create_generation(alias, meta) if rebuild else client.ensure_generation(alias, meta)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ragtune-ingest-")))
        executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="ragtune-parse"))  # one pool user
        yield Run(settings, source, client, physical, workdir, executor, loading)


def ready_to_write(run: Run, documents: int) -> IndexMeta:
    """Before a run's first chunk: the embedding model loading and the parser processes for ``documents`` starting
    side by side (seconds each in a cold process), then the loaded model's meta checked against the collection's.
    Nothing is written before this returns."""
    run.load_model()
    _start_parsers(run.settings.ingest, documents)
    return run.meta


_EMBEDDERS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # the two most recently used
_EMBEDDER_LOCK = threading.Lock()


def embedder(settings: Settings) -> Any:
    """One model load per process (a served deployment reuses it across event-driven runs)."""
    from tasks.ingest.embedding import Embedder

    m = settings.models
    key = (m.embedding, m.bf16, m.torch_threads, m.device, m.embedding_backend, settings.cache_dir)
    with _EMBEDDER_LOCK:  # the first batch warms it in the background while the main thread may ask too
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(m, cache_dir=settings.cache_dir)
            while len(_EMBEDDERS) > 2:
                _EMBEDDERS.popitem(last=False)
        _EMBEDDERS.move_to_end(key)
        return _EMBEDDERS[key]


# --- plan ------------------------------------------------------------------------------------------
def plan(run: Run, force: bool = False, shard: Shard | None = None) -> Diff:
    """The listing against the index's records: what to index and, under the deletion guard, what to delete.

    A shard's plan holds only the shard's documents and removes nothing: only its parent sees the whole
    listing, so only the parent guards and deletes.
    """
    with run.stats.timed("list"):
        records = run.index.read_records(run.collection, run.source.uri)
        listing = run.source.list()
        if shard:
            listing = [f for f in listing if shard.holds(f.doc_id)]
            records = {d: r for d, r in records.items() if shard.holds(d)}
        diff = diff_listing(listing, records)
    if shard:
        diff.removed = []
    else:
        run.stats.skipped = dict(run.source.skipped)
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
    from tasks.ingest.inventory import local_name  # file: URIs percent-encode the name's raw bytes

    if not uri.startswith(source.uri + "/"):
        raise ValueError(f"document {uri} is not under source {source.uri}")
    return local_name(source.uri, uri) if source.uri.startswith("file:") else uri[len(source.uri) + 1:]


# --- deletion, finishing, reporting ---------------------------------------------------------------
@task(name="delete-removed", cache_policy=NO_CACHE)
def delete_removed(run: Run, removed: Sequence[DocRecord]) -> int:
    """Chunks first, then records: a crash in between leaves records that the next run deletes again.
    No model needed: deleting a removed document's chunks is right whatever model wrote them."""
    ids = [r.doc_id for r in removed]
    with run.stats.timed("write"):
        run.index.delete_documents(run.collection, ids)
        run.index.flush(run.collection)
        run.index.delete_records(run.collection, ids)
    run.stats.deleted += sum(1 for r in removed if r.status == "indexed")
    return len(ids)


def finish(run: Run) -> IngestReport:
    """Flush (Milvus Lite searches unflushed rows by brute force) and summarise the run."""
    with run.stats.timed("flush"):
        run.index.flush(run.collection)
        run.index.flush_records(run.collection)
    s = run.stats
    total = sum(v for k, v in s.seconds.items() if k != "total")
    emb = embedder(run.settings) if run.loading is not None else None  # a run that embedded nothing: none loaded
    return IngestReport(
        source=run.source.uri, collection=run.collection, added=s.added, updated=s.updated,
        deleted=s.deleted, unchanged=s.unchanged, quarantined=len(s.quarantined),
        quarantine=[QuarantinedFile(**q) for q in s.quarantined], still_quarantined=s.still_quarantined,
        skipped=dict(s.skipped), chunks_written=s.chunks_written, chunks_reused=s.chunks_reused,
        seconds={k: round(v, 3) for k, v in s.seconds.items()},
        chunks_per_s=round(s.chunks_written / total, 2) if total else 0.0,
        embedding=EmbeddingStats(**emb.stats()) if emb else None,
    )


def batched(items: Sequence[SourceFile], size: int) -> Iterator[list[SourceFile]]:
    """Batches growing 4, 8, 16... up to ``size``: the first embed starts after a short first parse."""
    start, step = 0, min(4, max(1, size))
    while start < len(items):
        yield list(items[start:start + step])
        start, step = start + step, min(step * 2, max(1, size))


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
    # A short lease (renewed while the run lives): a killed run blocks the next one for about a minute.
    with concurrency(name, occupy=1, strict=True, lease_duration=LOCK_LEASE_S):
        yield
