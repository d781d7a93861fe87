"""Retrieval evaluation steps: materialize a benchmark as documents, rank every question, score.

Rankings come from the serving retriever itself (same encoder, same Milvus verbs), so the numbers
measure what `ragtune ask` would retrieve. Documents rank by their best chunk.
"""

from __future__ import annotations

import re

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.answer.retrieval import check_model, encode_queries
from tasks.evaluation.beir import BeirDataset, doc_id_of, write_corpus
from tasks.evaluation.pages import page_of_file
from tasks.settings import Settings
from tasks.types import Hit

CHUNKS_PER_DOC = 3  # chunks fetched per wanted document, so chunk-level ties still leave enough documents


def eval_alias(kind: str, name: str, settings: Settings) -> str:
    """A collection per benchmark and chunker setting (a different chunker needs a different collection)."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "set"
    overlap = f"_o{settings.ingest.overlap_tokens}" if settings.ingest.overlap_tokens else ""
    return f"eval_{kind}_{slug}_t{settings.ingest.max_tokens}{overlap}"


@task(name="materialize-corpus", cache_policy=NO_CACHE)
def materialize_corpus(settings: Settings, dataset: BeirDataset) -> str:
    """The BEIR corpus as a folder of Markdown files (title heading + text) under the data dir."""
    folder = settings.data_dir / "eval" / "beir" / re.sub(r"[^\w.-]+", "_", dataset.name) / "docs"
    write_corpus(dataset, folder)
    return str(folder)


@task(name="rank-questions", cache_policy=NO_CACHE)
def rank_questions(settings: Settings, collection: str, questions: list[str], mode: str, k: int) -> list[list[Hit]]:
    """The top-``k`` chunks for every question (one task for the whole set: a task per query costs ms)."""
    from tasks.answer.retrieval import search
    from tasks.stores import milvus

    with milvus.connect(settings) as index:
        physical = check_model(index, collection, settings)
        index.ensure_loaded(physical)
        if mode != "dense" and not index.has_bm25(physical):
            raise milvus.Bm25UnavailableError(f"{physical} has no BM25 field: evaluate with --mode dense")
        vectors = encode_queries(settings, questions) if mode != "bm25" else [None] * len(questions)
        if mode == "dense" and not settings.answer.chunks_per_page:
            return [list(h) for h in index.search_dense_many(physical, vectors, k)]
        return [search(index, physical, q, v, k, mode, settings) for q, v in zip(questions, vectors, strict=True)]


def beir_run(query_ids: list[str], rankings: list[list[Hit]]) -> dict[str, list[str]]:
    return {qid: [doc_id_of(h.path) for h in hits] for qid, hits in zip(query_ids, rankings, strict=True)}


def page_rankings(rankings: list[list[Hit]]) -> list[list[str]]:
    return [[page_of_file(h.path) for h in hits] for hits in rankings]

