"""`ragtune eval beir DIR` and `ragtune eval pages QUESTIONS.jsonl --docs DIR`: retrieval quality."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ragtune.commands._common import JsonOption, UserError, clear_errors, emit, subgroup

if TYPE_CHECKING:
    from flows.evaluate_retrieval import BeirEvaluation, PageEvaluation

MODES = ("dense", "bm25", "hybrid")
# Not CollectionOption: an evaluation ingests its corpus into the collection, so its default is a collection of
# its own, never the serving one.
EvalCollectionOption = typer.Option(
    "", "--collection", metavar="NAME",
    help="Collection to ingest the corpus into and search (alias or physical name; re-ingesting an unchanged "
         "corpus writes nothing); empty = one per benchmark and chunker, eval_<kind>_<name>_t<max_tokens>.")


def register(app: typer.Typer) -> None:
    group = subgroup(app, "eval", "Evaluate retrieval (beir, pages) and models.")
    group.command("beir")(beir)
    group.command("pages")(pages)


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


@clear_errors
def beir(
    dataset: str = typer.Argument(..., help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv."),
    mode: str = typer.Option("hybrid", "--mode", help="dense | bm25 | hybrid."),
    split: str = typer.Option("test", "--split", help="qrels split to score."),
    collection: str = EvalCollectionOption,
    as_json: bool = JsonOption,
) -> None:
    """Ingest the corpus through the normal ingestion flow, then report nDCG@10, Recall@10/100, MRR@10."""
    from flows.evaluate_retrieval import evaluate_beir

    emit(evaluate_beir(dataset, _mode(mode), split, collection), as_json, _human_beir)


@clear_errors
def pages(
    questions: str = typer.Argument(..., help="JSONL with question and source (the answering page's URL)."),
    docs: str = typer.Option(..., "--docs", help="The documentation folder the pages come from."),
    k: int = typer.Option(5, "--k", min=1, max=100, help="Chunks per question."),
    mode: str = typer.Option("hybrid", "--mode", help="dense | bm25 | hybrid."),
    collection: str = EvalCollectionOption,
    as_json: bool = JsonOption,
) -> None:
    """Share of questions whose source page is among the pages of the top-k retrieved chunks."""
    from flows.evaluate_retrieval import evaluate_pages

    emit(evaluate_pages(questions, docs, k, _mode(mode), collection), as_json, _human_pages)


def _human_beir(r: BeirEvaluation) -> str:
    return (f"{r.dataset} ({r.queries} queries, {r.mode}, collection {r.collection}): "
            f"nDCG@10 {r.ndcg_at_10:.4f} · Recall@10 {r.recall_at_10:.4f} · Recall@100 {r.recall_at_100:.4f} · "
            f"MRR@10 {r.mrr_at_10:.4f}")


def _human_pages(r: PageEvaluation) -> str:
    hits = " · ".join(f"{key} {value:.3f}" for key, value in r.hits.items())
    return f"{r.questions} questions, {r.mode}, collection {r.collection}: {hits}"
