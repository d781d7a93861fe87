"""compare_approaches: RAG only, fine-tuning only, both, and RAFT, on the same questions (issue 20).

    python -m flows.compare QA.jsonl DOCS [--arms rag,raft] [--limit N]

Reads: load the questions -> ingest the documents -> retrieve each test question's context once ->
build and train (or reuse) each recipe's model -> every arm answers -> score, compare with RAG only
-> publish the table and the chart.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.ingest import ingest_documents
from tasks.compare.arms import Training, parse_arms
from tasks.compare.report import Comparison, winner_line
from tasks.evaluation.compare import (
    answer_with_arm,
    assemble,
    build_arm_dataset,
    load_questions,
    publish_comparison,
    retrieve_test_contexts,
    trained_model,
)
from tasks.evaluation.ranking import eval_alias
from tasks.runtime.process import process_settings
from tasks.runtime.sources import generator_source


@flow(name="compare-approaches")
def compare_approaches(questions: str, docs: str = "", collection: str = "", arms: list[str] | None = None,
                       limit: int = 0, labels: list[str] | None = None, k: int = 0, preset: str = "",
                       method: str = "", profile: str = "", overrides: dict[str, Any] | None = None,
                       max_new_tokens: int = 0, test_share: float = 0.0, seed: int = 0) -> Comparison:
    """Train and score each arm on the same test questions, retriever and greedy decoding.

    Args:
        questions: QA JSONL: question, answer|answers, optional label, source, answerable, split, id.
        docs: Folder or s3://prefix of the documents, ingested into ``collection``; empty = use ``collection``.
        collection: Collection to ingest into / search; empty = one of its own (eval_compare_<docs>_t<tokens>).
        arms: Any of base, rag, finetune, finetune-rag, raft (rag, the baseline, always runs); empty = all.
        limit: Test questions to answer (the first N of the test split); 0 = all.
        labels: The closed label set (e.g. yes, no, maybe); empty = the labels the file uses.
        k: Chunks retrieved per question; 0 = settings.answer.k.
        preset: Training preset (default, demo, test); empty = settings.training.preset.
        method: lora or full; empty = settings.training.method.
        profile: accelerate profile; empty = settings.training.profile.
        overrides: Training config fields to override (e.g. {"max_steps": 20}).
        max_new_tokens: Greedy decoding budget per answer; 0 = settings.training.max_new_tokens.
        test_share: Share of source groups for test when the file has no split; 0 = settings.dataset.eval_share.
        seed: Seed of the split, the RAFT recipe and the bootstrap.
    """
    settings, started = process_settings(), time.monotonic()
    chosen, t = parse_arms(arms or []), settings.training
    train, test, options = load_questions(questions, labels or [], limit, test_share or settings.dataset.eval_share,
                                          seed)
    alias = collection or eval_alias("compare", Path(docs.rstrip("/")).name, settings)
    if docs:
        ingest_documents(docs, alias)
    k = k or settings.answer.k
    contexts = retrieve_test_contexts(settings, alias, test, k)
    training = Training(profile or t.profile, preset or t.preset, method or t.method, overrides or {})
    trained = {r: trained_model(settings, r, build_arm_dataset(settings, r, train, alias, k, training.max_seq_len(),
                                                               seed), training)
               for r in sorted({a.recipe for a in chosen if a.recipe})}
    base = str(generator_source(settings.cache_dir, settings.models.generator).path)
    models = {a.name: trained[a.recipe].model_dir if a.recipe else base for a in chosen}
    records = {a.name: answer_with_arm(settings, a, Path(models[a.name]), test, contexts, options,
                                       max_new_tokens or t.max_new_tokens) for a in chosen}
    result = assemble(records, chosen, models, trained, len(train), alias, time.monotonic() - started)
    publish_comparison(result, settings.data_dir / "compare" / "reports" / alias)
    get_run_logger().info("%s", winner_line(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("questions")
    parser.add_argument("docs")
    parser.add_argument("--arms", default="")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    print(compare_approaches(args.questions, args.docs, arms=args.arms.split(",") if args.arms else None,
                             limit=args.limit).model_dump_json(indent=2))
