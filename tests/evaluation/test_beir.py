"""Ranking metrics against values computed by hand, and BEIR folder loading."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.evaluation.beir import (
    doc_id_of,
    evaluate_run,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    write_corpus,
)
from tasks.evaluation.pages import hit_at_k, load_questions, page_of_file, page_of_url, sourced_hits
from tasks.settings import Settings
from tests.conftest import cli_json

# 1/log2(3) = 0.6309298, 1/log2(5) = 0.4306766
QRELS = {
    "q1": {"d1": 1, "d3": 1},
    "q2": {"d5": 2, "d6": 1},
    "q3": {"d4": 1},
    "q4": {"d9": 1},  # the run has nothing for q4: it counts as 0, not skipped
}
RUN = {
    "q1": ["d2", "d2", "d1", "d4", "d3"],  # chunk-level: d2 twice is one document at rank 1
    "q2": ["d6", "d5"],
    "q3": [f"x{i}" for i in range(11)] + ["d4"],  # relevant at rank 12: outside @10, inside @100
}


def test_ndcg_by_hand() -> None:
    # q1 ranks d2, d1, d4, d3: DCG = 0.6309298 + 0.4306766 = 1.0616064; IDCG = 1 + 0.6309298 -> 0.650921
    assert ndcg_at_k(["d2", "d1", "d4", "d3"], QRELS["q1"]) == pytest.approx(0.650921, abs=1e-6)
    # q2 graded: DCG = 1/1 + 2 * 0.6309298 = 2.2618596; IDCG = 2/1 + 1 * 0.6309298 = 2.6309298 -> 0.859719
    assert ndcg_at_k(["d6", "d5"], QRELS["q2"]) == pytest.approx(0.859719, abs=1e-6)
    assert ndcg_at_k(["d5", "d6"], QRELS["q2"]) == pytest.approx(1.0)
    assert ndcg_at_k([], QRELS["q2"]) == 0.0


def test_recall_and_mrr_by_hand() -> None:
    ranked = RUN["q3"]
    assert recall_at_k(ranked, QRELS["q3"], 10) == 0.0
    assert recall_at_k(ranked, QRELS["q3"], 100) == 1.0
    assert mrr_at_k(ranked, QRELS["q3"], 10) == 0.0
    assert mrr_at_k(["d2", "d1"], QRELS["q1"], 10) == 0.5
    assert recall_at_k(["d1"], QRELS["q1"], 10) == 0.5


def test_evaluate_run_means_over_every_judged_query() -> None:
    metrics = evaluate_run(RUN, QRELS)
    # per query (ndcg, r@10, r@100, mrr): q1 (0.650921, 1, 1, 0.5), q2 (0.859719, 1, 1, 1), q3 (0, 0, 1, 0), q4 0s
    assert metrics == {"ndcg@10": pytest.approx(0.37766, abs=1e-5), "recall@10": 0.5,
                       "recall@100": 0.75, "mrr@10": 0.375}


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = [{"_id": "a/1", "title": "Cats", "text": "Cats purr."}, {"_id": "b2", "title": "", "text": "Dogs bark."}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    queries = [{"_id": "q1", "text": "purring"}, {"_id": "q2", "text": "not judged in test"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta/1\t1\n")
    return root


def test_load_beir_and_write_corpus(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "tiny"))
    assert data.queries == {"q1": "purring"} and data.qrels == {"q1": {"a/1": 1}}
    docs = tmp_path / "docs"
    assert write_corpus(data, docs) == 2
    assert write_corpus(data, docs) == 0  # unchanged files are not rewritten: re-ingesting is a no-op
    files = sorted(p.name for p in docs.iterdir())
    assert [doc_id_of(f) for f in files] == ["a/1", "b2"]
    assert (docs / files[0]).read_text() == "# Cats\n\nCats purr.\n"


def test_load_beir_refuses_a_non_beir_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a BEIR dataset"):
        load_beir(tmp_path)


def test_page_mapping_and_hit_at_k(tmp_path: Path) -> None:
    assert page_of_url("https://docs.ray.io/en/master/serve/scaling.html#autoscaling") == "serve/scaling"
    assert page_of_file("/d/docs/serve/scaling.rst", "/d/docs") == "serve/scaling"
    ranked = [["a", "b", "c"], ["c", "c", "d"], ["x"]]
    assert hit_at_k(ranked, ["b", "d", "y"], 2) == pytest.approx(1 / 3)
    assert hit_at_k(ranked, ["b", "d", "y"], 3) == pytest.approx(2 / 3)
    assert sourced_hits(ranked, ["b", "d", "y"], {"b", "d"}, [2]) == {"sourced_questions": 2, "sourced_hit@2": 0.5}
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match="q.jsonl:1"):
        load_questions(bad)


# --- the evaluation flows, end to end: ingestion flow + Milvus Lite + the real encoder -------------------

TOPICS = {
    "c1": ("Photosynthesis in plants", "Chlorophyll absorbs sunlight to turn carbon dioxide and water into glucose."),
    "c2": ("Volcanic eruptions", "Magma rises through the crust and erupts as lava and ash."),
    "c3": ("Honey bee navigation", "Bees perform a waggle dance to tell the hive where flowers are."),
    "c4": ("Antibiotic resistance", "Bacteria that survive antibiotics pass resistance genes to their offspring."),
    "c5": ("Ocean tides", "The gravitational pull of the moon causes the tides of the oceans."),
}
QUESTIONS = {"q1": "how do plants turn sunlight into sugar", "q2": "why does the moon cause tides",
             "q3": "how do bees communicate where flowers are"}


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """get_settings() (what flows and the CLI read) -> this test's data dir, one torch thread."""
    from tasks.settings import get_settings

    monkeypatch.setenv("RAGTUNE_MODELS__TORCH_THREADS", "1")
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.mark.flow
def test_eval_beir_gives_the_hand_computed_values(tmp_path: Path, env: Settings, prefect_harness: None) -> None:
    root = tmp_path / "tinybeir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n"
                                               for i, (t, x) in TOPICS.items()))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUESTIONS.items()))
    # q1: its document ranks first -> 1 on every metric. q2: two judged, one absent from the corpus ->
    # nDCG@10 = 1 / (1 + 1/log2(3)) = 0.613147, Recall@10 = Recall@100 = 0.5, MRR@10 = 1. q3: judged
    # document absent -> 0 everywhere. Means: nDCG@10 0.537716, Recall 0.5, MRR@10 0.666667.
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tc1\t1\nq2\tc5\t1\n"
                                             "q2\tmissing\t1\nq3\tnot-in-corpus\t1\n")
    result = cli_json("eval", "beir", str(root), "--mode", "dense", "--json")
    assert {k: result[k] for k in ("ndcg@10", "recall@10", "recall@100", "mrr@10")} == {
        "ndcg@10": pytest.approx(0.537716, abs=1e-5), "recall@10": 0.5, "recall@100": 0.5,
        "mrr@10": pytest.approx(0.666667, abs=1e-5)}
    assert result["queries"] == 3 and result["chunks_written"] == 5


@pytest.mark.flow
def test_eval_pages_reports_hit_at_k(tmp_path: Path, env: Settings, prefect_harness: None) -> None:
    docs = tmp_path / "docs"
    for doc_id, (title, text) in TOPICS.items():
        (docs / "science").mkdir(parents=True, exist_ok=True)
        (docs / "science" / f"{doc_id}.md").write_text(f"# {title}\n\n{text}\n")
    base = "https://docs.example.org/en/master/science"
    rows = [{"question": QUESTIONS["q1"], "source": f"{base}/c1.html#x"},
            {"question": QUESTIONS["q2"], "source": f"{base}/c5.html"},
            {"question": QUESTIONS["q3"], "source": f"{base}/api/generated.html"}]  # no such page: a miss
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli_json("eval", "pages", str(questions), "--docs", str(docs), "--k", "2", "--mode", "hybrid", "--json")
    assert result["hit@k"] == result["hit@2"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["hit@1"] == pytest.approx(2 / 3, abs=1e-4) and result["questions"] == 3
    assert result["sourced_questions"] == 2 and result["sourced_hit@2"] == 1.0  # the page without a file left out
