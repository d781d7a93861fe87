"""Retrieval for a question: encode it with the model the collection was built with, search, time both.

A collection records its embedding model (``IndexMeta``); a query encoded with any other model
would return confident garbage, so a mismatch is refused with a clear error instead.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tasks.answer.fusion import fuse_pages, per_page
from tasks.settings import AnswerSettings, Settings
from tasks.types import Hit

MODES = ("dense", "bm25", "hybrid")
_EMBEDDERS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


class RetrievalError(RuntimeError):
    """The question cannot be answered from this collection as asked; the message says why."""


class CollectionNotFoundError(RetrievalError):
    """No collection or alias of that name."""


class IndexUnavailableError(RetrievalError):
    """Milvus is down or refused the search."""


@dataclass
class Retrieval:
    hits: list[Hit]
    collection: str  # the physical generation that served the search
    mode: str  # the mode actually used (hybrid degrades to dense on Milvus servers without BM25)
    timings: dict[str, float] = field(default_factory=dict)  # embed_s, search_s
    note: str = ""


def query_embedder(settings: Settings) -> Any:
    """The ingestion path's Embedder (same model, prompts, pooling, normalisation, backend choice), loaded once
    per process and model settings, on the answering thread (``tasks.runtime.torch_thread.on_torch_thread``),
    where ``encode_queries`` runs it. Full precision on a GPU (one short question gains nothing from half).

    Under ``models.embedding_backend=auto`` questions run in fp32 through ONNX (``QUERY_AUTO``) whatever the
    documents ran: int8 questions lost SciFact nDCG@10, int8 documents did not (docs/ingestion.md).
    """
    from tasks.ingest.embedding import QUERY_AUTO, Embedder
    from tasks.runtime.torch_thread import on_torch_thread

    m = settings.models
    key = (m.embedding, m.device, m.embedding_backend, m.torch_threads, settings.cache_dir)
    with _LOCK:
        if key not in _EMBEDDERS:
            backend = QUERY_AUTO if m.embedding_backend == "auto" else None
            _EMBEDDERS[key] = on_torch_thread(Embedder, m, bf16=False, cache_dir=settings.cache_dir, backend=backend)
        return _EMBEDDERS[key]


def encode_queries(settings: Settings, texts: list[str]) -> Any:
    """Unit query vectors (numpy float32; the model's query prompt, if it has one), with the configured
    embedding model (``Embedder.encode_queries`` runs on the answering thread)."""
    return query_embedder(settings).encode_queries(texts)


def check_model(index: Any, collection: str, settings: Settings) -> str:
    """The physical collection behind ``collection``, after checking its embedding model is ours."""
    physical = index.resolve(collection)
    if physical is None:
        raise CollectionNotFoundError(f"no collection or alias {collection!r} at {index.uri} (there: "
                                      f"{_listed(index.names())}); `ragtune ingest SOURCE --collection "
                                      f"{collection}` creates it")
    meta = index.index_meta(physical)
    if meta is None:
        raise RetrievalError(f"{physical} records no embedding model: it was not built by ragtune")
    encoder = query_embedder(settings)
    why = meta.encoder_mismatch(encoder.name, encoder.dim, encoder.backend, encoder.precision)
    if why:
        raise RetrievalError(f"{physical} cannot be searched with these queries: {why}. Set "
                             "RAGTUNE_MODELS__EMBEDDING to the model it was built with, or rebuild it "
                             "(ragtune ingest --rebuild)")
    return physical


def retrieve(settings: Settings, collection: str, question: str, k: int, mode: str, index: Any = None) -> Retrieval:
    """The top-``k`` chunks for ``question`` (``mode``: dense, bm25 or hybrid); ``index`` an open IndexClient."""
    from tasks.stores import milvus
    if mode not in MODES:
        raise RetrievalError(f"unknown retrieval mode {mode!r}: use one of {', '.join(MODES)}")
    if index is None:
        try:
            with milvus.connect(settings) as opened:
                return retrieve(settings, collection, question, k, mode, opened)
        except milvus.SERVICE_ERRORS as exc:
            raise IndexUnavailableError(f"Milvus at {settings.milvus_uri} failed: {_message(exc)}") from None
    try:
        return _retrieve(settings, collection, question, k, mode, index)
    except milvus.SERVICE_ERRORS as exc:
        raise IndexUnavailableError(f"Milvus at {index.uri} failed: {_message(exc)}") from None


def _retrieve(settings: Settings, collection: str, question: str, k: int, mode: str, index: Any) -> Retrieval:
    physical = check_model(index, collection, settings)
    index.ensure_loaded(physical)
    note = ""
    if mode != "dense" and not index.has_bm25(physical):
        if mode == "bm25":
            raise RetrievalError(f"{physical} has no BM25 field (Milvus server < 2.5): use --mode dense")
        mode, note = "dense", f"{physical} has no BM25 field (Milvus server < 2.5): hybrid degraded to dense"
    t0 = time.perf_counter()
    vector = encode_queries(settings, [question])[0] if mode != "bm25" else None
    t1 = time.perf_counter()
    hits = search(index, physical, question, vector, k, mode, settings)
    t2 = time.perf_counter()
    return Retrieval(hits, physical, mode, {"embed_s": t1 - t0, "search_s": t2 - t1}, note)


def search(index: Any, collection: str, question: str, vector: Any, k: int, mode: str, settings: Settings) -> list[Hit]:
    """The top-``k`` chunks; with ``answer.chunks_per_page`` set, pages are ranked (``fusion``) and a page's
    chunks after its first ``chunks_per_page`` come only after every page's first ones."""
    answer = settings.answer
    if not answer.chunks_per_page:
        return _chunks(index, collection, question, vector, k, mode, answer)
    depth = max(k, answer.hybrid_candidates)  # enough candidates for k distinct pages
    sides: list[list[Hit]] = []
    if mode != "bm25":
        sides.append(index.search_dense(collection, vector, depth))
    if mode == "bm25" or (mode == "hybrid" and index.hybrid_capable(collection)):
        sides.append(index.search_bm25(collection, question, depth))
    return per_page(fuse_pages(sides, answer.rrf_k), answer.chunks_per_page)[:k]


def _chunks(index: Any, collection: str, question: str, vector: Any, k: int, mode: str,
            answer: AnswerSettings) -> list[Hit]:
    """The top-``k`` chunks ranked alone (hybrid: Milvus' RRF over chunk ranks)."""
    if mode == "dense":
        return list(index.search_dense(collection, vector, k))
    if mode == "bm25":
        return list(index.search_bm25(collection, question, k))
    return list(index.search_hybrid(collection, question, vector, k, max(answer.hybrid_candidates, k), answer.rrf_k))


def _listed(names: list[str], most: int = 20) -> str:
    if not names:
        return "none yet"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", "") or exc)
