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


@flow(name="evaluate-beir")
def evaluate_beir(dataset: str, mode: str = "hybrid", split: str = "test") -> dict[str, Any]:
    """Ingest the corpus (title + text per document) into its own collection, rank the split's queries, score."""
    settings = process_settings()
    data = load_beir(Path(dataset), split)
    alias = eval_alias("beir", data.name, settings)
    ingest = ingest_documents(materialize_corpus(settings, data), alias)
    rankings = rank_questions(settings, alias, list(data.queries.values()), mode, 100 * CHUNKS_PER_DOC)
    metrics = evaluate_run(beir_run(list(data.queries), rankings), data.qrels)
    get_run_logger().info("%s %s (%d queries): %s", data.name, mode, len(data.queries), metrics)
    return {**metrics, "dataset": data.name, "mode": mode, "queries": len(data.queries), "collection": alias,
            "chunks_written": ingest.get("chunks_written")}


@flow(name="evaluate-pages")
def evaluate_pages(questions: str, docs: str, k: int = 5, mode: str = "hybrid") -> dict[str, Any]:
    """Share of questions whose answering page is among the pages of the top-k chunks (also at 1, 5, 13)."""
    settings = process_settings()
    asked = load_questions(Path(questions))
    alias = eval_alias("pages", Path(docs).resolve().name, settings)
    ingest_documents(docs, alias)
    cutoffs = sorted({1, 5, 13, k})
    pages = page_rankings(rank_questions(settings, alias, [q.question for q in asked], mode, max(cutoffs)))
    gold = [q.page for q in asked]
    result: dict[str, Any] = {f"hit@{c}": round(hit_at_k(pages, gold, c), 4) for c in cutoffs}
    result |= sourced_hits(pages, gold, source_pages(Path(docs)), cutoffs)
    get_run_logger().info("%d questions, %s: %s", len(asked), mode, result)
    return {"hit@k": result[f"hit@{k}"], "k": k, **result, "mode": mode, "questions": len(asked), "collection": alias}


if __name__ == "__main__":
    if sys.argv[1] == "beir":
        print(evaluate_beir(sys.argv[2], *sys.argv[3:4]))
    else:
        extra = sys.argv[4:]
        print(evaluate_pages(sys.argv[2], sys.argv[3], int(extra[0]) if extra else 5, *extra[1:2]))
