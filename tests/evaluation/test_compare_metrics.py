"""`ragtune compare`'s pure parts: the QA file and its split, the metrics, the paired bootstrap, the report,
each against values computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.compare import metrics as m
from tasks.compare.qa import QAFileError, QARow, label_set, load_qa, split_rows


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- the QA file --------------------------------------------------------------------------------------
def test_rows_load_with_defaults_and_both_answer_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "qa.jsonl", [
        {"question": " Where is the tower? ", "answer": "Paris", "source": "paris.md", "label": "yes"},
        {"id": "q2", "question": "Colours?", "answers": ["red", "blue "]},
        {"question": "Who won in 2090?", "answerable": False, "split": "eval"},
    ])
    rows = load_qa(path)
    assert rows[0] == QARow("row-1", "Where is the tower?", ("Paris",), True, "yes", "paris.md", None)
    assert rows[1].answers == ("red", "blue") and rows[1].id == "q2"
    assert rows[2].answerable is False and rows[2].answers == () and rows[2].split == "test"
    assert label_set(rows) == ["yes"]


@pytest.mark.parametrize(("lines", "message"), [
    ([], "no QA rows"),
    (["", "  "], "no QA rows"),
    (['{"question": "q", "answer": "a"}', "{oops"], r"qa.jsonl:2: not JSON"),
    (['{"answer": "a"}'], r"qa.jsonl:1: missing 'question'"),
    (['{"question": "q", "answer": "a"}', '{"question": "q2"}'], r"qa.jsonl:2: missing 'answer' or 'answers'"),
    (['{"question": "q", "answers": [1, 2]}'], r":1: 'answer' must be a string"),
    (['{"question": "q", "answer": "a", "answerable": "no"}'], r":1: 'answerable' must be true or false"),
    (['{"question": "q", "answer": "a", "split": "dev"}'], r":1: 'split' must be train or test"),
    (['{"question": "q", "answer": "a", "label": ""}'], r":1: 'label' must be a non-empty string"),
    (['["question"]'], r":1: a row must be a JSON object"),
    (['{"id": "x", "question": "q", "answer": "a"}', '{"id": "x", "question": "r", "answer": "b"}'],
     r"row 2: id 'x' appears twice"),
])
def test_a_bad_qa_file_names_the_row(tmp_path: Path, lines: list[str], message: str) -> None:
    with pytest.raises(QAFileError, match=message):
        load_qa(write(tmp_path / "qa.jsonl", lines))


def test_an_unknown_label_names_the_row_and_the_set(tmp_path: Path) -> None:
    path = write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a", "label": "yes"},
                                        {"id": "p7", "question": "r", "answer": "b", "label": "perhaps"}])
    with pytest.raises(QAFileError, match=r"row 2 \(id p7\): unknown label 'perhaps'; expected one of yes, no"):
        load_qa(path, labels=["yes", "no"])
    with pytest.raises(FileNotFoundError):
        load_qa(tmp_path / "missing.jsonl")


def test_split_keeps_source_groups_whole_or_follows_the_file() -> None:
    rows = [QARow(f"r{i}", f"q{i}", ("a",), source=f"doc{i % 5}.md") for i in range(40)]
    train, test = split_rows(rows, 0.4, seed=3)
    assert len(train) + len(test) == 40 and test and train
    assert not {r.source for r in train} & {r.source for r in test}
    assert split_rows(rows, 0.4, seed=3) == (train, test)  # deterministic
    given = [QARow("a", "q", ("x",), split="train"), QARow("b", "q", ("x",), split="test")]
    assert split_rows(given, 0.4, seed=3) == ([given[0]], [given[1]])
    with pytest.raises(QAFileError, match="'b' has no 'split'"):
        split_rows([given[0], QARow("b", "q", ("x",))], 0.4, seed=3)


# -- metrics ------------------------------------------------------------------------------------------
def test_squad_normalisation_exact_match_and_f1() -> None:
    assert m.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert m.exact_match("According to [2]: the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert m.exact_match("Eiffel tower [1], Paris", ["Eiffel Tower"]) == 0.0
    assert m.token_f1("Paris is in France", ["Paris France"]) == pytest.approx(2 / 3)  # P 2/4, R 2/2
    assert m.token_f1("blue", ["red", "blue sky"]) == pytest.approx(2 / 3)  # the best reference: P 1, R 1/2
    assert m.token_f1("nothing shared", ["Paris"]) == 0.0
    assert m.token_f1("", [""]) == 1.0


def test_label_accuracy_and_macro_f1() -> None:
    gold, pred = ["yes", "yes", "no", "maybe"], ["yes", "no", "no", "yes"]
    assert m.accuracy(gold, pred) == 0.5
    # yes: tp 1 fp 1 fn 1 -> 1/2; no: tp 1 fp 1 fn 0 -> 2/3; maybe: tp 0 -> 0
    assert m.macro_f1(gold, pred) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m.macro_f1(gold, pred, ["yes", "no"]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert m.best_option({"yes": -1.5, "no": -0.2, "maybe": -0.2}) == "no"
    assert m.accuracy([], []) is None and m.macro_f1([], []) is None


def test_abstention_scores_and_percentiles() -> None:
    assert m.no_answer_f1([True, True, False, False], [True, False, True, False]) == 0.5  # tp 1 fp 1 fn 1
    assert m.no_answer_f1([False], [True]) is None
    assert m.no_answer_f1([True], [False]) == 0.0
    assert m.percentile([4, 1, 3, 2], 50) == 2.5
    assert m.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert m.percentile([], 50) is None and m.mean([1, 2]) == 1.5


def test_paired_bootstrap_intervals() -> None:
    same = m.paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], m.mean)
    assert same is not None and (same.delta, same.low, same.high, same.excludes_zero) == (0.0, 0.0, 0.0, False)
    better = m.paired_bootstrap([1.0] * 5, [0.0] * 5, m.mean)
    assert better is not None and (better.delta, better.low, better.high, better.excludes_zero) == (1, 1, 1, True)
    mixed = m.paired_bootstrap([1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], m.mean, seed=7)
    assert mixed is not None and mixed.delta == 0.5 and 0.0 <= mixed.low < 0.5 < mixed.high <= 1.0
    assert mixed == m.paired_bootstrap([1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], m.mean, seed=7)
    pairs = m.paired_bootstrap([("yes", "yes"), ("no", "no")], [("yes", "no"), ("no", "no")],
                               lambda rows: m.accuracy(*zip(*rows, strict=True)) if rows else None)
    assert pairs is not None and pairs.delta == 0.5
    assert m.paired_bootstrap([], [], m.mean) is None
    with pytest.raises(ValueError, match="same questions"):
        m.paired_bootstrap([1.0], [1.0, 0.0], m.mean)


# -- an arm's summary, the winner, the report ---------------------------------------------------------
def rec(f1: float | None, *, answerable: bool = True, abstained: bool = False, label: str | None = None,
        predicted: str | None = None, recall: bool | None = None, seconds: float = 1.0) -> dict[str, object]:
    return {"id": "x", "prediction": "", "answerable": answerable, "abstained": abstained, "em": f1, "f1": f1,
            "label": label, "predicted_label": predicted, "recall": recall, "citation_valid": None, "supported": None,
            "prompt_tokens": 10, "seconds": seconds}


def test_summary_winner_and_report() -> None:
    from tasks.compare.report import ArmResult, Comparison, markdown, pick_winner
    from tasks.compare.scores import differences, primary_metric, summarize

    rag = [rec(1.0, recall=True, seconds=1), rec(0.0, recall=False, seconds=2), rec(0.0, seconds=3),
           rec(None, answerable=False, abstained=True, seconds=4)]
    raft = [rec(1.0, seconds=1), rec(1.0, seconds=1), rec(0.5, seconds=1),
            rec(None, answerable=False, abstained=False, seconds=5)]
    s = summarize(rag)
    assert (s["f1"], s["recall_at_k"], s["abstention_accuracy"], s["no_answer_f1"]) == (1 / 3, 0.5, 1.0, 1.0)
    assert (s["latency_p50_s"], s["latency_p95_s"], s["prompt_tokens"]) == (2.5, pytest.approx(3.85), 10)
    assert summarize(raft)["no_answer_f1"] == 0.0 and summarize(raft)["label_accuracy"] is None
    assert primary_metric(rag) == "f1"
    assert primary_metric([rec(1.0, label="yes", predicted="no"), rec(1.0)]) == "label_accuracy"
    vs = differences(raft, rag, resamples=200)
    assert vs["f1"]["delta"] == pytest.approx(2.5 / 3 - 1 / 3) and vs["abstention_accuracy"]["delta"] == -1.0
    winner = pick_winner({"rag": rag, "raft": raft}, "f1")
    assert winner is not None and (winner.arm, winner.runner_up) == ("raft", "rag")
    assert winner.margin == pytest.approx(0.5) and winner.low is not None and winner.low <= 0.5 <= (winner.high or 0)
    arms = {n: ArmResult(model=n, retrieval=True, scores=summarize(r), cost={"train_s": 0.0, "train_tokens": 0},
                         vs_baseline=differences(r, rag, resamples=50) if n != "rag" else {})
            for n, r in (("rag", rag), ("raft", raft))}
    text = markdown(Comparison(questions=4, train_questions=9, collection="c", baseline="rag", primary_metric="f1",
                               arms=arms, winner=winner, seconds=1.0))
    assert "**Winner: raft** (token F1 0.833), ahead of rag by +0.500" in text
    assert "| raft | 0.833 | 0.833 |" in text and "| raft | +0.500 [" in text
