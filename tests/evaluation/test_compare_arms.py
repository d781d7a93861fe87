"""`compare-approaches` end to end on a tiny QA set: six documents through the ingestion flow (Milvus Lite,
the real embedding model), a 2-layer Llama with SmolLM2's tokenizer as the generator (seconds to train),
every arm answering; a re-run through `ragtune compare --json` reuses both trained models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.cli import app
from tasks.compare.report import Comparison, chart_png, markdown
from tasks.compare.scores import GROUNDING, QUALITY
from tasks.settings import Settings

DOCS = {
    "aurora.md": "# Aurora bridge\n\nThe Aurora bridge is painted green. It opened to traffic in 1932.\n",
    "basil.md": "# Basil\n\nBasil grows best in warm sunny soil. Pesto is made from fresh basil leaves.\n",
    "comet.md": "# Comet cafe\n\nThe Comet cafe serves cardamom buns every Friday morning.\n",
    "dune.md": "# Dune hotel\n\nThe Dune hotel has forty rooms, all facing the sea.\n",
    "ember.md": "# Ember lamp\n\nThe Ember lamp runs on two AA batteries for ten hours.\n",
    "fjord.md": "# Fjord ferry\n\nThe Fjord ferry leaves the harbour at seven in the morning.\n",
}
QA = [
    {"question": "What colour is the Aurora bridge?", "answer": "green", "source": "aurora.md", "split": "train"},
    {"question": "Did the Aurora bridge open in 1932?", "answer": "yes", "label": "yes", "source": "aurora.md",
     "split": "train"},
    {"question": "What is pesto made from?", "answer": "fresh basil leaves", "source": "basil.md", "split": "train"},
    {"question": "What does the Comet cafe serve on Fridays?", "answer": "cardamom buns", "source": "comet.md",
     "split": "train"},
    {"question": "Does the Comet cafe serve buns on Mondays?", "answer": "no", "label": "no", "source": "comet.md",
     "split": "train"},
    {"question": "How many rooms does the Dune hotel have?", "answer": "forty", "source": "dune.md", "split": "train"},
    {"question": "Who painted the Dune hotel?", "answerable": False, "split": "train"},
    {"id": "t1", "question": "What does the Ember lamp run on?", "answers": ["two AA batteries", "AA batteries"],
     "source": "ember.md", "split": "test"},
    {"id": "t2", "question": "Does the Ember lamp run for ten hours?", "answer": "yes", "label": "yes",
     "source": "ember.md", "split": "test"},
    {"id": "t3", "question": "When does the Fjord ferry leave?", "answer": "at seven in the morning",
     "source": "fjord.md", "split": "test"},
    {"id": "t4", "question": "What is the capital of the Fjord ferry's owner?", "answerable": False,
     "split": "test"},
]
TRAINING = {"max_steps": 2, "max_seq_len": 384}


@pytest.fixture
def compare_settings(settings: Settings, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    from tasks.settings import get_settings

    monkeypatch.setenv("RAGTUNE_MODELS__GENERATOR", str(tiny_model))
    monkeypatch.setenv("RAGTUNE_MODELS__TORCH_THREADS", "1")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def corpus(root: Path) -> tuple[Path, Path]:
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    qa = root / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return qa, docs


def runs(settings: Settings) -> list[Path]:
    return sorted((settings.data_dir / "runs").glob("*"))


@pytest.mark.flow
def test_every_arm_runs_and_a_rerun_reuses_the_trained_models(compare_settings: Settings, tmp_path: Path,
                                                               prefect_harness: None) -> None:
    from flows.compare import compare_approaches

    qa, docs = corpus(tmp_path)
    first = compare_approaches(str(qa), str(docs), "compare_tiny", k=3, preset="test", method="full",
                               overrides=TRAINING, max_new_tokens=6)
    assert list(first.arms) == ["base", "rag", "finetune", "finetune-rag", "raft"]
    assert (first.questions, first.train_questions, first.primary_metric) == (4, 7, "f1")
    check_scores(first)
    trained = {n: a.cost for n, a in first.arms.items() if n in ("finetune", "raft")}
    assert all(c["reused"] is False and c["train_s"] > 0 and c["train_tokens"] > 0 for c in trained.values())
    assert first.arms["finetune"].model == first.arms["finetune-rag"].model != first.arms["raft"].model
    assert len(runs(compare_settings)) == 2
    report = compare_settings.data_dir / "compare" / "reports" / "compare_tiny"
    assert "## Difference against rag" in (report / "comparison.md").read_text()
    assert (report / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert latest_artifact("compare-approaches").data.startswith("# RAG, fine-tuning or both: 4 test questions")
    assert latest_artifact("compare-approaches-chart").data.startswith("data:image/png;base64,")

    out = CliRunner().invoke(app, ["compare", str(qa), "--docs", str(docs), "--collection", "compare_tiny",
                                   "--arms", "finetune,raft", "--k", "3", "--preset", "test", "--full",
                                   "--max-steps", "2", "--max-seq-len", "384", "--max-new-tokens", "6", "--json"])
    assert out.exit_code == 0, out.output
    again = Comparison.model_validate(json.loads(out.stdout.strip().splitlines()[-1]))
    assert set(again.arms) == {"rag", "finetune", "raft"} and len(runs(compare_settings)) == 2
    for name in ("finetune", "raft"):
        assert again.arms[name].cost["reused"] is True
        assert again.arms[name].cost["fingerprint"] == first.arms[name].cost["fingerprint"]
        assert again.arms[name].model == first.arms[name].model
    same = (*QUALITY, *GROUNDING)  # same questions, context and greedy decoding (latency aside)
    assert {k: again.arms["rag"].scores[k] for k in same} == {k: first.arms["rag"].scores[k] for k in same}


def latest_artifact(key: str) -> Any:
    """The newest artifact with ``key`` on the server this process talks to."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                            limit=1, sort="CREATED_DESC")
    return artifact


def check_scores(result: Comparison) -> None:
    for name, arm in result.arms.items():
        s = arm.scores
        assert s["f1"] is not None and 0 <= s["f1"] <= 1 and s["em"] is not None
        assert s["label_accuracy"] in (0.0, 1.0)  # one labelled test question (t2)
        assert s["abstention_accuracy"] in (0.0, 1.0)  # one unanswerable test question (t4)
        assert (s["recall_at_k"] is None) == (not arm.retrieval)
        assert s["latency_p50_s"] is not None and s["prompt_tokens"] is not None and s["prompt_tokens"] > 0
        assert bool(arm.vs_baseline) == (name != "rag")
    assert result.arms["rag"].scores["recall_at_k"] == 1.0  # three sourced questions, each naming its document
    assert result.arms["rag"].scores["prompt_tokens"] > result.arms["base"].scores["prompt_tokens"]
    assert result.winner is not None and result.winner.arm in result.arms
    assert set(result.hybrid_vs) == set(result.arms) - {"raft"}
    assert markdown(result).count("\n| ") >= 15 and chart_png(result).startswith(b"\x89PNG")


def test_cli_names_the_bad_row_before_any_flow_starts(tmp_path: Path) -> None:
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "r", "label": "yes"}\n')
    out = CliRunner().invoke(app, ["compare", str(bad), "--docs", str(tmp_path)])
    assert out.exit_code == 1 and "qa.jsonl:2: missing 'answer' or 'answers'" in out.output
    out = CliRunner().invoke(app, ["compare", str(bad), "--arms", "rag,magic", "--docs", str(tmp_path)])
    assert out.exit_code == 1 and "unknown arm(s) magic" in out.output
    out = CliRunner().invoke(app, ["compare", str(bad)])
    assert out.exit_code == 1 and "--docs" in out.output


def test_option_likelihoods_from_the_first_token_match_a_forward_pass(tiny_model: Path) -> None:
    from tasks.compare.answers import greedy, option_logprobs
    from tasks.training.scoring import load_model

    model, tokenizer = load_model(tiny_model)
    ids = tokenizer("<|im_start|>user\nIs it?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)[
        "input_ids"]
    _, first = greedy(model, tokenizer, ids, 3)
    options = ["yes", "no", "maybe"]
    fast, batched = option_logprobs(model, tokenizer, ids, options, first), option_logprobs(model, tokenizer, ids,
                                                                                           options)
    assert fast == pytest.approx(batched, abs=1e-4)
    longer = option_logprobs(model, tokenizer, ids, ["yes indeed", "no"], first)  # two tokens: the batched pass
    assert longer["no"] == pytest.approx(batched["no"], abs=1e-4) and longer["yes indeed"] < batched["yes"]
