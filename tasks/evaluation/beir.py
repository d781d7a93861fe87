"""BEIR-format datasets and the ranking metrics BEIR reports (pytrec_eval definitions), as pure functions.

nDCG uses linear gains (``rel / log2(rank + 1)``) like trec_eval's ``ndcg_cut``; a query's ideal
ranking is its judged documents sorted by relevance. Means are taken over every judged query: a
query the run has no results for counts as 0 (pytrec_eval would skip it and flatter the mean).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

Qrels = dict[str, dict[str, int]]  # query id -> document id -> relevance


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: dict[str, tuple[str, str]]  # document id -> (title, text)
    queries: dict[str, str]
    qrels: Qrels


def load_beir(root: Path, split: str = "test") -> BeirDataset:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv; only the split's judged queries are kept."""
    for need in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / need).is_file():
            raise FileNotFoundError(f"{root / need} is missing: not a BEIR dataset folder")
    corpus = {str(r["_id"]): (r.get("title") or "", r.get("text") or "") for r in _jsonl(root / "corpus.jsonl")}
    qrels = read_qrels(root / "qrels" / f"{split}.tsv")
    queries = {str(r["_id"]): r["text"] for r in _jsonl(root / "queries.jsonl") if str(r["_id"]) in qrels}
    return BeirDataset(root.name, corpus, queries, {q: d for q, d in qrels.items() if q in queries})


def read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def _jsonl(path: Path) -> Iterable[dict]:
    with path.open() as fh:
        yield from (json.loads(line) for line in fh if line.strip())


def dedupe(ranked: Iterable[str]) -> list[str]:
    """Documents in first-seen order: a document's rank is that of its best chunk."""
    return list(dict.fromkeys(ranked))


def ndcg_at_k(ranked: Sequence[str], judged: dict[str, int], k: int = 10) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], judged: dict[str, int], k: int) -> float:
    relevant = {d for d, r in judged.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], judged: dict[str, int], k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:k]) if judged.get(d, 0) > 0), 0.0)


def evaluate_run(run: dict[str, list[str]], qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, Recall@10/100 and MRR@10 over the judged queries; ``run`` maps query -> ranked doc ids."""
    metrics = {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    for qid, judged in qrels.items():
        ranked = dedupe(run.get(qid, []))
        metrics["ndcg@10"] += ndcg_at_k(ranked, judged, 10)
        metrics["recall@10"] += recall_at_k(ranked, judged, 10)
        metrics["recall@100"] += recall_at_k(ranked, judged, 100)
        metrics["mrr@10"] += mrr_at_k(ranked, judged, 10)
    n = max(len(qrels), 1)
    return {name: round(total / n, 5) for name, total in metrics.items()}


def document_text(title: str, text: str) -> str:
    """A corpus entry as one document: the title as a heading, then the text (BEIR joins them too)."""
    return f"# {title}\n\n{text}\n" if title else f"{text}\n"


def write_corpus(dataset: BeirDataset, folder: Path) -> int:
    """The corpus as one Markdown file per document (so it ingests like any folder); unchanged files are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for doc_id, (title, text) in dataset.corpus.items():
        path = folder / f"{quote(doc_id, safe='')}.md"
        body = document_text(title, text)
        if not path.is_file() or path.read_text() != body:  # keep mtimes: the ingest diff stays a no-op
            path.write_text(body)
            written += 1
    return written


def doc_id_of(path: str) -> str:
    """The corpus id of a document written by ``write_corpus`` (its file name, unquoted, without .md)."""
    return unquote(Path(path).name.removesuffix(".md"))
