"""One batch of documents through read, parse, chunk, embed and write (the ``index-batch`` task).

Crash safety: before a batch writes chunks its documents are recorded as ``pending`` (and flushed);
only after the chunks are flushed are they recorded as ``indexed``. The next batch is read, recorded
and handed to the parser processes while this one embeds (one background thread waits on them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.ingest.chunking import DocInfo, chunk_elements, load_tokenizer
from tasks.ingest.inventory import SourceFile, content_hash
from tasks.ingest.parsing import Element
from tasks.ingest.plan import Run, RunStats, embedder, parser_pool
from tasks.runtime.sources import embedding_source
from tasks.settings import Settings
from tasks.types import Chunk, DocRecord


@dataclass
class Prepared:
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
        tokenizer = _tokenizer(run.settings)
        ingest = run.settings.ingest
        chunks = {d: chunk_elements(els, _doc_info(f, h), tokenizer, ingest.max_tokens, ingest.overlap_tokens)
                  for d, (f, h, els) in parsed.items()}
    _quarantine_chunkless(run, prep, parsed, chunks)
    flat = [c for cs in chunks.values() for c in cs]
    vectors = _vectors(run, flat, [d for d in chunks if d in prep.known]) if flat else None
    with run.stats.timed("write"):
        if flat:
            run.index.upsert_chunks(run.collection, flat, vectors, new_documents=parsed.keys() - prep.known.keys())
        run.index.delete_documents(run.collection, prep.failed)  # a document that turned bad leaves the index
        run.index.flush(run.collection)
    for doc_id, (f, digest, _) in parsed.items():
        prep.records.append(_record(f, digest, "indexed", len(chunks[doc_id])))
        _count_write(run.stats, f, prep.known)
    run.index.write_records(run.collection, prep.records)
    run.stats.chunks_written += len(flat)


def _key(files: Sequence[SourceFile]) -> tuple[str, ...]:
    return tuple(f.doc_id for f in files)


def _prepare(run: Run, files: Sequence[SourceFile]) -> Prepared:
    """Read the files, record the ones to parse as pending (write-ahead, flushed), start their parsing."""
    known = run.index.get_records(run.collection, [f.doc_id for f in files])
    prep = Prepared(known, [], [], None)
    todo = _read(run, files, prep)
    if todo:
        run.index.write_records(run.collection, [_record(f, h, "pending") for f, _, h in todo])
        run.index.flush_records(run.collection)
        prep.parsed = run.executor.submit(_parse, run, todo)
        if not run.warming:  # the first batch: load the chunker's tokenizer (~1 s, cold) while its documents parse
            run.warming = True
            run.load_model()  # under way already when a flow called ready_to_write
            threading.Thread(target=_tokenizer, args=(run.settings,), daemon=True).start()
    return prep


def _tokenizer(settings: Settings) -> Any:
    """The embedding model's tokenizer, which measures the chunk budget (loaded once per process)."""
    return load_tokenizer(str(embedding_source(settings.models.embedding).path))


def _read(run: Run, files: Sequence[SourceFile], prep: Prepared) -> list[tuple[SourceFile, Path, str]]:
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
    pool = parser_pool(run.settings.ingest, len(todo))
    for key, result in pool.parse([(f.doc_id, path, f.suffix) for f, path, _ in todo]):
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


def _quarantine_chunkless(run: Run, prep: Prepared, parsed: dict[str, tuple[SourceFile, str, list[Element]]],
                          chunks: dict[str, list[Chunk]]) -> None:
    """A document that yields no chunk is quarantined, never recorded as indexed with nothing searchable."""
    for doc_id in [d for d, cs in chunks.items() if not cs]:
        f, digest, elements = parsed.pop(doc_id)
        del chunks[doc_id]
        headings_only = all(e.type == "Title" for e in elements)
        reason = ("no text: the parser found headings only, no body text" if headings_only
                  else "no text: the parsed content made no chunk")
        prep.records.append(_quarantine(run, f, digest, reason))
        prep.failed.append(doc_id)


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
