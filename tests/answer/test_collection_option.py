"""`--collection` on ask, serve and the evaluations: a second collection with another corpus is reachable
without RAGTUNE_MILVUS__COLLECTION, a missing one is refused with the names that exist, and the production
release's model answers only for its own collection. Real Milvus Lite, real models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ragtune.cli import app
from tasks.answer import retrieval
from tasks.answer.serving import serving_for
from tasks.release.cache import ProductionRelease
from tasks.release.manifest import CheckpointRef, GateDecision, IndexRef, ReleaseManifest
from tasks.runtime.sources import GENERATOR_MODEL_NAME, ModelSource
from tasks.settings import Settings
from tasks.stores import milvus
from tests.answer.test_retrieval import index_texts

DOCS = {"manual.md": "The Zorblax 3000 vacuum cleaner has a battery life of 90 minutes and charges in 4 hours.",
        "hours.md": "Our office is open 9am to 5pm on weekdays."}
PETS = {"parrot.md": "Kiwi the parrot eats sunflower seeds, apple slices and mango every morning.",
        "cat.md": "Miso the cat sleeps on the radiator and chases the red laser dot."}
QUESTION = "What does Kiwi the parrot eat?"


@pytest.fixture
def two(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``docs`` (the default) and ``pets``, each with its own corpus; get_settings() (what the CLI reads) -> them."""
    from tasks.settings import get_settings

    index_texts(settings, "docs", DOCS)
    index_texts(settings, "pets", PETS)
    monkeypatch.setenv("RAGTUNE_MODELS__TORCH_THREADS", "1")
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def last_json(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ask_searches_the_named_collection(two: Settings) -> None:
    named = last_json(cli("ask", QUESTION, "--collection", "pets", "--k", "2", "--max-new-tokens", "2", "--json"))
    assert named["collection"] == "pets__g1" and {s["uri"] for s in named["sources"]} == set(PETS)
    assert named["model"] == GENERATOR_MODEL_NAME and named["release_id"] is None
    default = last_json(cli("ask", QUESTION, "--k", "2", "--max-new-tokens", "1", "--json"))
    assert default["collection"] == "docs__g1" and {s["uri"] for s in default["sources"]} == set(DOCS)


@pytest.mark.parametrize("command", [["ask", QUESTION], ["serve"]])
def test_a_missing_collection_is_named_with_those_that_exist(two: Settings, command: list[str]) -> None:
    result = cli(*command, "--collection", "pest")
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())  # unwrapped
    assert "no collection or alias 'pest'" in message
    assert "(there: docs, docs__g1, pets, pets__g1)" in message  # record collections left out
    assert "ragtune ingest SOURCE --collection pest" in message


def test_serve_answers_from_the_named_collection(two: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ragtune serve --collection` as run, up to binding the port: its app answers from that collection."""
    import uvicorn

    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: served.update(app=app, port=port))
    monkeypatch.setattr(retrieval, "_EMBEDDERS", {})  # serve freezes its query encoder: not the session's one
    result = cli("serve", "--collection", "pets__g1", "--port", "8123")
    assert result.exit_code == 0, result.output
    assert "serving pets__g1 with" in result.output and served["port"] == 8123
    client = TestClient(served["app"], raise_server_exceptions=False)
    assert client.get("/healthz").json()["generation"] == "pets__g1"
    resp = client.post("/ask", json={"question": QUESTION, "k": 2, "max_new_tokens": 1})
    assert resp.status_code == 200, resp.text
    assert resp.json()["collection"] == "pets__g1" and {s["uri"] for s in resp.json()["sources"]} == set(PETS)


@pytest.mark.flow
def test_eval_pages_ingests_into_and_scores_the_named_collection(two: Settings, tmp_path: Path,
                                                                 prefect_harness: None) -> None:
    docs = tmp_path / "pages"
    docs.mkdir()
    for name, text in PETS.items():
        (docs / name).write_text(f"# {name[:-3]}\n\n{text}\n")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": QUESTION, "source": "https://pets.example.org/en/latest/parrot.html"})
                         + "\n")
    result = last_json(cli("eval", "pages", str(questions), "--docs", str(docs), "--k", "1", "--mode", "dense",
                           "--collection", "mine", "--json"))
    assert result["collection"] == "mine" and result["hit@1"] == 1.0
    with milvus.connect(two) as index:
        assert index.resolve("mine") == "mine__g1"
        assert not [n for n in index.names() if n.startswith("eval_")]  # not the default eval collection


# --- which model answers a named collection (pure: a release as the pointer gives it) --------------------------

BASE = ModelSource(GENERATOR_MODEL_NAME, Path("/models/base"), "test")


def release(index: bool = True, model: bool = True) -> ProductionRelease:
    manifest = ReleaseManifest(
        release_id="20260110T000000Z-00000001", created=datetime(2026, 1, 10, tzinfo=UTC), parent=None,
        code_revision="x", index=IndexRef(alias="docs", generation="docs__g3") if index else None,
        model=CheckpointRef(checkpoint_id="sha256-c", prefix="checkpoints/sha256-c", files=[]) if model else None,
        gate=GateDecision(promote=True, reasons=[]))
    return ProductionRelease(manifest.release_id, manifest, "docs__g3" if index else None,
                             Path("/releases/sha256-c") if model else None)


@pytest.mark.parametrize("name", ["docs", "docs__g3"])
def test_the_release_serves_its_index_and_model_by_alias_or_generation(name: str) -> None:
    served = serving_for(release(), name, lambda: BASE)
    assert (served.collection, served.model_name, served.release_id) == (
        "docs__g3", "checkpoint:sha256-c", "20260110T000000Z-00000001")
    assert served.note == ""


@pytest.mark.parametrize("name", ["pets", "docs__g4"])  # another collection; a generation the release does not bind
def test_another_collection_is_answered_by_the_base_generator(name: str) -> None:
    served = serving_for(release(), name, lambda: BASE)
    assert (served.collection, served.model_path, served.release_id) == (name, BASE.path, None)
    assert served.note == (f"{name} is not the index of production release 20260110T000000Z-00000001 (docs): "
                           "answered by the base generator")


def test_without_a_release_or_with_a_model_only_release() -> None:
    assert serving_for(None, "pets", lambda: BASE).model_name == GENERATOR_MODEL_NAME
    model_only = serving_for(release(index=False), "pets", lambda: BASE)
    assert (model_only.collection, model_only.model_name) == ("pets", "checkpoint:sha256-c")
    index_only = serving_for(release(model=False), "docs", lambda: BASE)
    assert (index_only.collection, index_only.model_path, index_only.release_id) == (
        "docs__g3", BASE.path, "20260110T000000Z-00000001")


def test_the_base_generator_is_not_converted_when_the_release_answers() -> None:
    def base() -> ModelSource:
        raise AssertionError("the base generator was resolved")

    assert serving_for(release(), "docs", base).model_name == "checkpoint:sha256-c"
