"""The steps of ``compare-approaches`` as Prefect tasks: questions, context, training sets, trained models,
each arm's answers, the assembled comparison and its artifacts. The logic lives in ``tasks.compare``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.compare.answers import Context
from tasks.compare.arms import BASELINE, Arm, TrainedModel, Training, retrieve_contexts, train_or_reuse
from tasks.compare.metrics import paired_bootstrap
from tasks.compare.qa import QAFileError, QARow, label_set, load_qa, split_rows
from tasks.compare.recipes import closed_book_rows, count_tokens, fingerprint, holdout, raft_rows, write_dataset
from tasks.compare.report import ArmResult, Comparison, chart_png, markdown, pick_winner
from tasks.compare.scores import STATISTICS, Record, differences, primary_metric, score_reply, summarize
from tasks.settings import Settings

HELD_OUT_SHARE = 0.1  # of the training questions (whole groups): the training script's eval loss, never test
WITHHOLD_SHARE = 0.2  # RAFT: examples whose supporting chunk is withheld (the paper's 1 - P = 0.2)


@task(name="load-questions", cache_policy=NO_CACHE)
def load_questions(path: str, labels: list[str], limit: int, test_share: float,
                   seed: int) -> tuple[list[QARow], list[QARow], list[str]]:
    """(train, test, label options): the file validated, split, the test questions cut to ``limit``."""
    rows = load_qa(Path(path), labels or None)
    train, test = split_rows(rows, test_share, seed)
    test = test[:limit] if limit else test
    if not test:
        raise QAFileError(f"{path}: no test questions after the split (give rows \"split\": \"test\")")
    return train, test, list(labels) or label_set(rows)


@task(name="retrieve-test-contexts", cache_policy=NO_CACHE)
def retrieve_test_contexts(settings: Settings, collection: str, rows: list[QARow], k: int) -> dict[str, Context]:
    return retrieve_contexts(settings, collection, rows, k)


@task(name="build-arm-dataset", cache_policy=NO_CACHE)
def build_arm_dataset(settings: Settings, recipe: str, rows: list[QARow], collection: str, k: int,
                      max_seq_len: int, seed: int) -> tuple[str, Path, int]:
    """The recipe's training set as a content-addressed dataset dir: (version, dir, training tokens)."""
    from tasks.dataset.rows import load_generator_tokenizer

    if not rows:
        raise QAFileError("no training questions: give rows \"split\": \"train\" or more source groups")
    tokenizer = load_generator_tokenizer(settings.cache_dir, settings.models.generator)
    if recipe == "finetune":
        records = closed_book_rows(rows)
    else:
        deeper = {i: c.hits for i, c in retrieve_contexts(settings, collection, rows, 2 * k + 2).items()}
        records = raft_rows(tokenizer, rows, deeper, k, WITHHOLD_SHARE, settings.dataset.support_threshold,
                            max_seq_len, seed)
    train, held = holdout(records, HELD_OUT_SHARE, seed)
    version, path = write_dataset(settings.data_dir / "compare" / "datasets", train, held)
    return version, path, count_tokens(tokenizer, train)


def trained_model(settings: Settings, recipe: str, dataset: tuple[str, Path, int], training: Training) -> TrainedModel:
    """The recipe's model: reused when dataset version, base weights and training settings match."""
    from tasks.runtime.sources import generator_source

    version, path, tokens = dataset
    base = generator_source(settings.cache_dir, settings.models.generator).path
    return train_or_reuse(settings, recipe, path, version, fingerprint(version, base, training.key()), tokens,
                          training)


@task(name="answer-with-arm", cache_policy=NO_CACHE)
def answer_with_arm(settings: Settings, arm: Arm, model: Path, rows: list[QARow], contexts: dict[str, Context],
                    options: list[str], max_new_tokens: int) -> list[Record]:
    """The arm's answers to every test question, scored one by one."""
    from tasks.compare.answers import answer_all
    from tasks.runtime.cpu import configure_torch
    from tasks.runtime.torch_thread import on_torch_thread

    on_torch_thread(configure_torch, settings.models.torch_threads)
    used = contexts if arm.rag else None
    replies = on_torch_thread(answer_all, model, rows, used, options, max_new_tokens, settings.answer.prompt_tokens)
    return [score_reply(row, reply, contexts[row.id].hits if arm.rag else None, settings.dataset.support_threshold)
            for row, reply in zip(rows, replies, strict=True)]


def assemble(records: dict[str, list[Record]], arms: list[Arm], models: dict[str, str],
             trained: dict[str, TrainedModel], train_questions: int, collection: str | None,
             seconds: float) -> Comparison:
    """Scores, cost and the differences against the baseline per arm; the winner on the primary metric."""
    results = {}
    for arm in arms:
        made = trained.get(arm.recipe or "")
        cost: dict[str, Any] = ({"train_s": made.train_s, "train_tokens": made.train_tokens,
                                 "tokens_per_s": made.tokens_per_s, "reused": made.reused, "dataset": made.dataset,
                                 "fingerprint": made.fingerprint} if made else {"train_s": 0.0, "train_tokens": 0})
        vs = differences(records[arm.name], records[BASELINE]) if arm.name != BASELINE else {}
        results[arm.name] = ArmResult(model=models[arm.name], retrieval=arm.rag, scores=summarize(records[arm.name]),
                                      cost=cost, vs_baseline=vs)
    metric = primary_metric(records[BASELINE])
    return Comparison(questions=len(records[BASELINE]), train_questions=train_questions, collection=collection,
                      baseline=BASELINE, primary_metric=metric, arms=results, winner=pick_winner(records, metric),
                      hybrid_vs=hybrid_differences(records, metric), seconds=round(seconds, 1))


def hybrid_differences(records: dict[str, list[Record]], metric: str) -> dict[str, dict[str, Any]]:
    """The hybrid (raft) against every other arm on the primary metric: the issue's bar is >= RAG only + 5
    points and >= fine-tuning only + 5 points, each interval excluding 0."""
    if "raft" not in records:
        return {}
    pairs = {arm: paired_bootstrap(records["raft"], rs, STATISTICS[metric]) for arm, rs in records.items()
             if arm != "raft"}
    return {arm: d.as_dict() for arm, d in pairs.items() if d is not None}


@task(name="publish-comparison", cache_policy=NO_CACHE)
def publish_comparison(result: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """The table and the winner as a markdown artifact, the chart as an image artifact (a data URI: no store
    to reach, no link that expires); both also written under ``out_dir``."""
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    text, png = markdown(result), chart_png(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(text)
    (out_dir / "comparison.png").write_bytes(png)
    create_markdown_artifact(text, key="compare-approaches", description="RAG, fine-tuning or both")
    create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(png).decode(),
                          key="compare-approaches-chart", description="Quality vs cost per arm")
    return out_dir / "comparison.md", out_dir / "comparison.png"
