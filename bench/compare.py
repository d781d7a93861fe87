"""PubMedQA (pqa_labeled) through `compare-approaches`: RAG only, fine-tuning only, both, and RAFT.

    python bench/compare.py [DATA_DIR] [--limit 500] [--train-limit 0] [--arms ...] [--preset demo]
                            [--max-steps 0] [--max-new-tokens 32] [--corpus all|used]
    python bench/compare.py --dataset bitext [DATA_DIR] [--limit 200] [--train-limit 800] ...

``--dataset bitext`` (../shared/data/bitext_customer_support, where fine-tuning is expected to matter more
than retrieval): the corpus is one document per intent holding three of its training responses; the
questions are customer instructions, the answers the dataset's responses, the source the intent's document;
every intent appears in both splits (a seeded 1 in 5 of each intent's rows is test).

DATA_DIR defaults to ../shared/data/pubmedqa_pqal (ori_pqal.json: 1,000 expert-labelled questions with
their abstracts; test_ground_truth.json: the official 500-id test split). The corpus is every abstract
(one Markdown file per PMID, its CONTEXTS as paragraphs; the conclusion, LONG_ANSWER, is not in it);
the questions are the test split (a seeded random ``--limit`` of it: the file is ordered by label),
training uses the other 500 (the first ``--train-limit``; 0 = all). Each row: question,
answer = LONG_ANSWER, label = final_decision (yes/no/maybe, scored by option likelihood), source = its
abstract. ``--corpus used`` indexes only the abstracts of the questions used (a smoke run; the real
benchmark indexes all 1,000).

Prints the markdown table, then one JSON object as the last stdout line: per arm label accuracy and
macro-F1 with the paired-bootstrap difference against RAG only, the majority-class accuracy of the test
questions used, and the issue's targets (hybrid >= RAG only + 5 points and >= fine-tuning only + 5
points, both intervals excluding 0, above the majority baseline) checked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_DATA = {"pubmedqa": REPO.parent / "shared" / "data" / "pubmedqa_pqal",
                "bitext": REPO.parent / "shared" / "data" / "bitext_customer_support"}
LABELS = ["yes", "no", "maybe"]


def contexts(item: dict[str, Any]) -> list[str]:
    """CONTEXTS is a list, or (in this copy) the repr of one."""
    import ast

    value = item["CONTEXTS"]
    return list(ast.literal_eval(value) if isinstance(value, str) else value)


def write_inputs(data: Path, out: Path, limit: int, train_limit: int, corpus: str) -> tuple[Path, Path, list[str]]:
    """The QA file and the corpus folder; returns them and the test questions' labels."""
    items = json.loads((data / "ori_pqal.json").read_text())
    test_ids = list(json.loads((data / "test_ground_truth.json").read_text()))
    train_ids = [pmid for pmid in items if pmid not in set(test_ids)]
    # the ground-truth file is ordered by label (its first 276 ids are all "yes"): a prefix of it is one
    # class, so a limited run takes a seeded random sample of the split instead
    test_ids = random.Random(0).sample(test_ids, limit) if 0 < limit < len(test_ids) else test_ids
    train_ids = train_ids[: train_limit or None]
    rows = [_row(pmid, items[pmid], "test") for pmid in test_ids] + [_row(p, items[p], "train") for p in train_ids]
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for pmid in items if corpus == "all" else [*test_ids, *train_ids]:
        text = f"# PubMed {pmid}\n\n" + "\n\n".join(contexts(items[pmid])) + "\n"
        path = docs / f"{pmid}.md"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    qa = out / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return qa, docs, [items[p]["final_decision"] for p in test_ids]


def _row(pmid: str, item: dict[str, Any], split: str) -> dict[str, Any]:
    return {"id": pmid, "question": item["QUESTION"], "answer": item["LONG_ANSWER"], "label": item["final_decision"],
            "source": f"{pmid}.md", "split": split}


def write_bitext(data: Path, out: Path, limit: int, train_limit: int) -> tuple[Path, Path, list[str]]:
    """Instructions as questions, responses as answers, one document per intent (three training responses)."""
    import csv
    import hashlib

    with (data / "Bitext_Sample_Customer_Support_Training_Dataset.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    test_of = {i: int(hashlib.sha256(f"{i}".encode()).hexdigest(), 16) % 5 == 0 for i in range(len(rows))}
    qa = [{"id": f"b{i}", "question": r["instruction"], "answer": r["response"], "source": f"{r['intent']}.md",
           "split": "test" if test_of[i] else "train"} for i, r in enumerate(rows)]
    test, train = [r for r in qa if r["split"] == "test"], [r for r in qa if r["split"] == "train"]
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    by_intent: dict[str, list[str]] = {}
    for i, r in enumerate(rows):
        if not test_of[i]:
            by_intent.setdefault(r["intent"], []).append(r["response"])
    for intent, responses in by_intent.items():
        title = intent.replace("_", " ")
        (docs / f"{intent}.md").write_text(f"# {title}\n\n" + "\n\n".join(responses[:3]) + "\n")
    path = out / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*test[: limit or None], *train[: train_limit or None]]))
    return path, docs, []


def targets(result: Any, majority: float) -> dict[str, Any]:
    """The issue's bar for the hybrid (raft) arm, checked where the arms ran."""
    if "raft" not in result.arms:
        return {}
    out: dict[str, Any] = {"raft_above_majority": (result.arms["raft"].scores.get("label_accuracy") or 0) > majority}
    for arm in ("rag", "finetune"):
        d = result.hybrid_vs.get(arm)
        if d:
            out[f"raft_vs_{arm}_+5pt_interval_excludes_0"] = d["delta"] >= 0.05 and d["low"] > 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default="")
    parser.add_argument("--dataset", choices=tuple(DEFAULT_DATA), default="pubmedqa")
    parser.add_argument("--limit", type=int, default=500, help="test questions (of 500)")
    parser.add_argument("--train-limit", type=int, default=0, help="training questions (of 500); 0 = all")
    parser.add_argument("--arms", default="", help="comma-separated; empty = all five")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=0.0, help="training budget per model; 0 = the preset's")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--corpus", choices=("all", "used"), default="all")
    parser.add_argument("--collection", default="")
    args = parser.parse_args()
    # as the CLI does: Prefect's ephemeral API gets 20 s to start, too few on two busy cores
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

    from flows.compare import compare_approaches
    from tasks.compare.report import markdown
    from tasks.settings import get_settings

    settings = get_settings()
    out, data = settings.data_dir / "bench" / args.dataset, Path(args.data or DEFAULT_DATA[args.dataset])
    if args.dataset == "bitext":
        qa, docs, gold = write_bitext(data, out, args.limit, args.train_limit)
    else:
        qa, docs, gold = write_inputs(data, out, args.limit, args.train_limit, args.corpus)
    majority = Counter(gold).most_common(1)[0][1] / len(gold) if gold else 0.0
    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("max_minutes", args.max_minutes)) if v} or None
    result = compare_approaches(str(qa), str(docs), args.collection or f"bench_{args.dataset}_{args.corpus}",
                                [a for a in args.arms.split(",") if a], labels=LABELS if gold else None,
                                preset=args.preset,
                                overrides=overrides, max_new_tokens=args.max_new_tokens)
    print(markdown(result))
    summary = {"benchmark": args.dataset, "test_questions": result.questions,
               "train_questions": result.train_questions, "majority_accuracy": round(majority, 4),
               "arms": {n: {"label_accuracy": a.scores.get("label_accuracy"),
                            "label_macro_f1": a.scores.get("label_macro_f1"), "f1": a.scores.get("f1"),
                            "recall_at_k": a.scores.get("recall_at_k"),
                            "vs_rag_label_accuracy": a.vs_baseline.get("label_accuracy"),
                            "latency_p50_s": a.scores.get("latency_p50_s"), "train_s": a.cost.get("train_s")}
                        for n, a in result.arms.items()},
               "winner": result.winner.model_dump() if result.winner else None, "raft_vs": result.hybrid_vs,
               "targets": targets(result, majority), "seconds": result.seconds}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
