"""Retrieval quality on real benchmarks, measured through the normal ingestion flow and the serving retriever.

- ``evaluate_beir``: a BEIR folder (corpus, queries, qrels) -> nDCG@10, Recall@10/100, MRR@10.
- ``evaluate_pages``: questions naming their answering page + the docs folder -> hit@k
  (ray-project/llm-applications' measure).

Run locally with ``python -m flows.evaluate_retrieval beir DIR [MODE]`` or
``python -m flows.evaluate_retrieval pages QUESTIONS DOCS [K] [MODE]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from flows.ingest import ingest_documents
from tasks.evaluation.beir import evaluate_run, load_beir
from tasks.evaluation.pages import hit_at_k, load_questions, source_pages, sourced_hits
from tasks.evaluation.ranking import (
    CHUNKS_PER_DOC,
    beir_run,
    eval_alias,
    materialize_corpus,
    page_rankings,
    rank_questions,
)
from tasks.runtime.process import process_settings


class BeirEvaluation(BaseModel):
    """BEIR scores of one retrieval mode; ``ragtune eval beir --json`` prints these keys (metric@k as named)."""

    model_config = ConfigDict(serialize_by_alias=True)

    ndcg_at_10: float = Field(alias="ndcg@10")
    recall_at_10: float = Field(alias="recall@10")
    recall_at_100: float = Field(alias="recall@100")
    mrr_at_10: float = Field(alias="mrr@10")
    dataset: str
    mode: str
    queries: int
    collection: str
    chunks_written: int


class PageEvaluation(BaseModel):
    """Page hit rates of one retrieval mode; ``ragtune eval pages --json`` prints these keys.

    The cutoffs vary with ``k`` (always 1, 5, 13 and k), so the hit rates are dicts keyed ``hit@N`` /
    ``sourced_hit@N``, flattened into the top level when dumped (and nested again when validated).
    """

    model_config = ConfigDict(serialize_by_alias=True)

    hit_at_k: float = Field(alias="hit@k")
    k: int
    hits: dict[str, float] = Field(description="hit@N for every cutoff N.")
    sourced_questions: int = Field(description="Questions whose answering page has a source file.")
    sourced_hits: dict[str, float] = Field(description="sourced_hit@N: hit@N over the sourced questions.")
    mode: str
    questions: int
    collection: str

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hits" not in data:
            data = dict(data)
            data["hits"] = {key: data.pop(key) for key in list(data) if key.startswith("hit@") and key != "hit@k"}
            data["sourced_hits"] = {key: data.pop(key) for key in list(data) if key.startswith("sourced_hit@")}
        return data

    @model_serializer(mode="wrap")
    def _flatten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in handler(self).items():
            flat |= value if key in ("hits", "sourced_hits") else {key: value}
        return flat


@flow(name="evaluate-beir")
def evaluate_beir(dataset: str, mode: str = "hybrid", split: str = "test", collection: str = "") -> BeirEvaluation:
    """Ingest the corpus (title + text per document) into ``collection`` (empty: its own), rank the split's
    queries, score."""
    settings = process_settings()
    data = load_beir(Path(dataset), split)
    alias = collection or eval_alias("beir", data.name, settings)
    ingest = ingest_documents(materialize_corpus(settings, data), alias)
    rankings = rank_questions(settings, alias, list(data.queries.values()), mode, 100 * CHUNKS_PER_DOC)
    metrics = evaluate_run(beir_run(list(data.queries), rankings), data.qrels)
    get_run_logger().info("%s %s (%d queries): %s", data.name, mode, len(data.queries), metrics)
    return BeirEvaluation.model_validate({**metrics, "dataset": data.name, "mode": mode, "queries": len(data.queries),
                                          "collection": alias, "chunks_written": ingest.chunks_written})


@flow(name="evaluate-pages")
def evaluate_pages(questions: str, docs: str, k: int = 5, mode: str = "hybrid", collection: str = "") -> PageEvaluation:
    """Share of questions whose answering page is among the pages of the top-k chunks (also at 1, 5, 13);
    the docs are ingested into ``collection`` (empty: a collection of their own)."""
    settings = process_settings()
    asked = load_questions(Path(questions))
    alias = collection or eval_alias("pages", Path(docs).resolve().name, settings)
    ingest_documents(docs, alias)
    cutoffs = sorted({1, 5, 13, k})
    pages = page_rankings(rank_questions(settings, alias, [q.question for q in asked], mode, max(cutoffs)))
    gold = [q.page for q in asked]
    result: dict[str, Any] = {f"hit@{c}": round(hit_at_k(pages, gold, c), 4) for c in cutoffs}
    result |= sourced_hits(pages, gold, source_pages(Path(docs)), cutoffs)
    get_run_logger().info("%d questions, %s: %s", len(asked), mode, result)
    return PageEvaluation.model_validate({"hit@k": result[f"hit@{k}"], "k": k, **result, "mode": mode,
                                          "questions": len(asked), "collection": alias})


if __name__ == "__main__":
    if sys.argv[1] == "beir":
        print(evaluate_beir(sys.argv[2], *sys.argv[3:4]).model_dump(mode="json"))
    else:
        extra = sys.argv[4:]
        result = evaluate_pages(sys.argv[2], sys.argv[3], int(extra[0]) if extra else 5, *extra[1:2])
        print(result.model_dump(mode="json"))
