"""`ragtune compare QA.jsonl --docs DIR`: RAG only, fine-tuning only, both, and RAFT, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ragtune.commands._common import JsonOption, UserError, clear_errors, emit

if TYPE_CHECKING:
    from tasks.compare.report import Comparison


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@clear_errors
def compare(
    questions: str = typer.Argument(..., help="QA JSONL: question, answer|answers, optional label, source, "
                                              "answerable, split, id."),
    docs: str = typer.Option("", "--docs", help="Folder or s3://bucket/prefix of the documents to ingest."),
    collection: str = typer.Option("", "--collection", metavar="NAME",
                                   help="Collection to ingest into / search; without --docs it must exist. Empty = "
                                        "one of its own, eval_compare_<docs>_t<max_tokens>."),
    arms: str = typer.Option("", "--arms", help="Comma-separated: base, rag, finetune, finetune-rag, raft "
                                                "(rag, the baseline, always runs); empty = all five."),
    limit: int = typer.Option(0, "--limit", min=0, help="Test questions to answer (0: all)."),
    labels: str = typer.Option("", "--labels", help="The closed label set, e.g. yes,no,maybe (default: the file's)."),
    k: int = typer.Option(0, "--k", min=0, max=100, help="Chunks per question (0: settings.answer.k)."),
    preset: str = typer.Option("", "--preset", help="Training preset: default, demo, test (settings default)."),
    lora: bool | None = typer.Option(None, "--lora/--full", help="LoRA adapters (merged) or full fine-tuning."),
    max_steps: int = typer.Option(0, "--max-steps", min=0, help="Cap the optimizer steps (0: the preset decides)."),
    max_seq_len: int = typer.Option(0, "--max-seq-len", min=0, help="Longest training example (0: the preset's)."),
    max_new_tokens: int = typer.Option(0, "--max-new-tokens", min=0, help="Decoding budget (0: settings)."),
    as_json: bool = JsonOption,
) -> None:
    """Train (or reuse) and score every arm on the same test questions, retriever and decoding; name the winner."""
    from flows.compare import compare_approaches
    from tasks.compare.arms import parse_arms
    from tasks.compare.qa import load_qa

    if not docs and not collection:
        raise UserError("give the documents (--docs DIR|s3://...) or an existing --collection NAME")
    parse_arms(_names(arms))
    load_qa(Path(questions), _names(labels) or None)  # a bad file fails here, before any flow starts
    method = "" if lora is None else ("lora" if lora else "full")
    overrides = {key: value for key, value in (("max_steps", max_steps), ("max_seq_len", max_seq_len)) if value}
    result = compare_approaches(questions, docs, collection, _names(arms), limit, _names(labels), k, preset, method,
                                overrides=overrides, max_new_tokens=max_new_tokens)
    emit(result, as_json, _human)


def _human(result: Comparison) -> str:
    from tasks.compare.report import markdown

    return markdown(result)
