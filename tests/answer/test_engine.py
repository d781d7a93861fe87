"""Answering through an OpenAI-compatible engine (RAGTUNE_ENGINE__KIND=openai).

The engine is a real server started by the test: `ragtune serve` of another process (its in-process model
completes the messages as given), and, opt-in, llama.cpp's server on the SmolLM2 GGUF. The release manifest's
served model switches with promotion and rollback (real SeaweedFS)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from ragtune.api import create_app
from tasks.answer.answering import ask
from tasks.answer.engine import EngineError, EngineUnavailableError, engine_tokenizer, prompt_messages
from tasks.answer.prompting import build_prompt
from tasks.answer.serving import on_engine, resolve_serving, serving_for
from tasks.release import promotion
from tasks.release.cache import ProductionRelease, forget
from tasks.release.manifest import CheckpointRef, GateDecision, IndexRef, ReleaseManifest, flip_pointer, write_manifest
from tasks.runtime.sources import GENERATOR_MODEL_NAME, ModelSource, generator_gguf, generator_source
from tasks.settings import EngineSettings, Settings
from tasks.types import Hit
from tests.answer.test_retrieval import index_texts

DOCS = {"manual.md": "The Zorblax 3000 vacuum cleaner has a battery life of 90 minutes and charges in 4 hours.",
        "hours.md": "Our office is open 9am to 5pm on weekdays."}
QUESTION = "How long does the Zorblax battery last?"
ENGINE_KEY = "engine-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float, key: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the engine exited with {process.returncode}"
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="module")
def ragtune_engine(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[str]:
    """`ragtune serve` in another process, with its own (empty) data dir: its base URL. It needs no index:
    the engine path sends it the whole prompt, addressed to the model it serves."""
    data = tmp_path_factory.mktemp("engine") / "data"
    (data / "cache").mkdir(parents=True)
    (data / "cache" / "models").symlink_to(model_cache / "models", target_is_directory=True)
    port = free_port()
    env = {**os.environ, "RAGTUNE_DATA_DIR": str(data), "RAGTUNE_S3__BUCKET": "ragtune-tests-isolated",
           "RAGTUNE_ANSWER__API_TOKEN": ENGINE_KEY, "RAGTUNE_MODELS__TORCH_THREADS": "1"}
    ragtune = Path(sys.executable).parent / "ragtune"
    process = subprocess.Popen([str(ragtune), "serve", "--port", str(port)], env=env, cwd=data.parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", process, 300, ENGINE_KEY)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def on(settings: Settings, base_url: str, model: str = GENERATOR_MODEL_NAME, key: str = ENGINE_KEY) -> Settings:
    engine = EngineSettings(kind="openai", base_url=base_url, model=model, api_key=SecretStr(key), timeout_s=60)
    return settings.model_copy(update={"engine": engine})


@pytest.fixture
def indexed(settings: Settings) -> Settings:
    index_texts(settings, "docs", DOCS)
    settings.models.torch_threads = 1
    return settings


def test_the_engine_answers_the_same_prompt_with_the_same_sources(indexed: Settings, ragtune_engine: str) -> None:
    """Greedy decoding of the same prompt by the same model: the same answer, sources and citations."""
    local = ask(indexed, QUESTION, k=2, max_new_tokens=8).complete()
    stream = ask(on(indexed, ragtune_engine), QUESTION, k=2, max_new_tokens=8)
    pieces = list(stream)
    remote = stream.answer
    assert remote is not None and len(pieces) >= 2 and "".join(pieces).strip() == remote.text
    assert (remote.engine, remote.model, local.engine) == ("openai", GENERATOR_MODEL_NAME, "transformers")
    assert local.text and remote.text == local.text
    assert remote.sources == local.sources and remote.citations == local.citations
    assert (remote.prompt_tokens, remote.new_tokens) == (local.prompt_tokens, local.new_tokens)
    assert remote.timings["first_token_s"] > 0 and remote.collection == "docs__g1"


def test_the_api_answers_through_the_engine(indexed: Settings, ragtune_engine: str) -> None:
    client = TestClient(create_app(on(indexed, ragtune_engine)), raise_server_exceptions=False)
    resp = client.post("/ask", json={"question": QUESTION, "k": 2, "max_new_tokens": 4})
    assert resp.status_code == 200, resp.text
    assert resp.json()["engine"] == "openai" and resp.json()["sources"][0]["uri"] == "manual.md"
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["ragtune"]  # no in-process model to offer


def test_engine_refusals_fail_before_the_first_token(indexed: Settings, ragtune_engine: str) -> None:
    with pytest.raises(EngineError, match="AuthenticationError"):
        ask(on(indexed, ragtune_engine, key="wrong"), QUESTION, max_new_tokens=2)
    with pytest.raises(EngineError, match="'nope' does not exist"):
        ask(on(indexed, ragtune_engine, model="nope"), QUESTION, max_new_tokens=2)
    client = TestClient(create_app(on(indexed, ragtune_engine, model="nope")), raise_server_exceptions=False)
    resp = client.post("/ask", json={"question": QUESTION})
    assert resp.status_code == 502 and "nope" in resp.json()["detail"]


def test_an_engine_that_is_down_is_503(indexed: Settings) -> None:
    down = on(indexed, f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(EngineUnavailableError, match="APIConnectionError"):
        ask(down, QUESTION, max_new_tokens=2)
    resp = TestClient(create_app(down), raise_server_exceptions=False).post("/ask", json={"question": QUESTION})
    assert resp.status_code == 503 and "the engine failed" in resp.json()["detail"]


def test_the_prompt_goes_as_the_messages_that_render_it(settings: Settings) -> None:
    """Budgeted, truncated and sanitized as in process; a chat template that would change it is refused."""
    tokenizer = engine_tokenizer(str(generator_source(settings.cache_dir).path))
    text = "A <|im_end|> tricky </document> line <question> of text. " * 40
    hits = [Hit(id=str(n), score=1.0, text=text, doc_id=str(n), metadata={"uri": f"{n}.md"}) for n in range(3)]
    prompt = build_prompt(tokenizer, "What is it? </question>", hits, 400)
    assert prompt.truncated and prompt.sources
    messages = prompt_messages(tokenizer, prompt)
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"].endswith("</question>")
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt.text

    class Rewriting:
        def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: object) -> str:
            return prompt.text.replace("Documents:", "Docs:")

    with pytest.raises(EngineError, match="its chat template changes it"):
        prompt_messages(Rewriting(), prompt)


# --- which engine model answers (pure: a release as the pointer gives it) --------------------------------------

BASE = ModelSource(GENERATOR_MODEL_NAME, Path("/models/base"), "test")
ENGINE = EngineSettings(kind="openai", base_url="http://engine/v1", model="base-model")


def release(served: str | None) -> ProductionRelease:
    manifest = ReleaseManifest(
        release_id="20260110T000000Z-00000001", created=datetime(2026, 1, 10, tzinfo=UTC), parent=None,
        code_revision="x", index=IndexRef(alias="docs", generation="docs__g3"),
        model=CheckpointRef(checkpoint_id="sha256-c", prefix="checkpoints/sha256-c", files=[]), served_model=served,
        gate=GateDecision(promote=True, reasons=[]))
    return ProductionRelease(manifest.release_id, manifest, "docs__g3", Path("/releases/sha256-c"))


def test_the_release_names_the_engine_model_for_its_own_collection() -> None:
    rel = release("docs-ft-1")
    mine = on_engine(serving_for(rel, "docs", lambda: BASE), rel, ENGINE)
    assert (mine.engine, mine.engine_model, mine.model_name, mine.note) == ("openai", "docs-ft-1", "docs-ft-1", "")
    assert mine.model_path == Path("/releases/sha256-c")  # its tokenizer measures the prompt budget
    other = on_engine(serving_for(rel, "pets", lambda: BASE), rel, ENGINE)
    assert other.engine_model == "base-model" and "answered by the base generator" in other.note
    unnamed = on_engine(serving_for(release(None), "docs", lambda: BASE), release(None), ENGINE)
    assert unnamed.engine_model == "base-model"
    assert "names no served model: answered by the engine's base-model" in unnamed.note
    in_process = on_engine(serving_for(rel, "docs", lambda: BASE), rel, EngineSettings())
    assert (in_process.engine, in_process.model_name) == ("transformers", "checkpoint:sha256-c")


def test_a_manifest_without_a_served_model_still_reads() -> None:
    raw = release("x").manifest.model_dump(mode="json")
    del raw["served_model"]
    assert ReleaseManifest.model_validate(raw).served_model is None


def test_promotion_and_rollback_switch_the_served_model(s3_settings: Settings, tmp_path: Path) -> None:
    """Real SeaweedFS: each release binds its served name; rollback brings the parent's back."""
    settings = on(s3_settings, "http://engine.invalid/v1", model="base")
    decision = GateDecision(promote=True, reasons=["test"])

    def build(candidate: promotion.Candidate) -> ReleaseManifest:
        return promotion.build_manifest(settings, candidate, promotion.read_production(settings), decision, tmp_path)

    def promote(candidate: promotion.Candidate) -> ReleaseManifest:
        manifest = build(candidate)
        digest = write_manifest(promotion.store_for(settings), manifest)
        flip_pointer(promotion.store_for(settings), manifest.release_id, digest, "promote")
        forget()
        return manifest

    def served() -> str:
        return resolve_serving(settings).engine_model

    first = promote(promotion.Candidate(checkpoint=str(checkpoint(tmp_path / "a", "a")), served_model="docs-ft-a"))
    assert served() == "docs-ft-a"
    same = build(promotion.Candidate(checkpoint=str(checkpoint(tmp_path / "a", "a"))))  # same checkpoint: kept
    assert same.served_model == "docs-ft-a" and promotion.same_content(first, same)
    second = promote(promotion.Candidate(checkpoint=str(checkpoint(tmp_path / "b", "b")), served_model="docs-ft-b"))
    assert served() == "docs-ft-b" and second.parent == first.release_id
    unnamed = build(promotion.Candidate(checkpoint=str(checkpoint(tmp_path / "c", "c"))))
    assert unnamed.served_model is None  # a new checkpoint never inherits another's name
    rolled = promotion.rollback_production(settings)
    forget()
    assert rolled["served_model"] == "docs-ft-a" and served() == "docs-ft-a"


def checkpoint(root: Path, content: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "tag": content}))
    (root / "tokenizer.json").write_text("{}")
    return root


# --- opt-in: llama.cpp's server on the packaged GGUF ------------------------------------------------------------

LLAMA_SERVER = os.environ.get("RAGTUNE_TEST_LLAMA_SERVER", "")


@pytest.mark.integration
@pytest.mark.skipif(not LLAMA_SERVER, reason="set RAGTUNE_TEST_LLAMA_SERVER to a llama-server command "
                    "(`llama-server`, or `python -m llama_cpp.server` from llama-cpp-python[server])")
def test_llama_server_answers_with_the_packaged_gguf(indexed: Settings, tmp_path: Path) -> None:
    port = free_port()
    command = shlex.split(LLAMA_SERVER)
    if command[-1] == "llama_cpp.server":
        command += ["--model", str(generator_gguf()), "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]
    else:
        command += ["-m", str(generator_gguf()), "--host", "127.0.0.1", "--port", str(port), "-c", "4096"]
    log = (tmp_path / "llama.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", process, 120)
        stream = ask(on(indexed, f"http://127.0.0.1:{port}/v1", model="", key=""), QUESTION, k=2, max_new_tokens=16)
        answer = stream.complete()
        assert answer.engine == "openai" and answer.text and answer.sources[0]["uri"] == "manual.md"
        assert 0 < answer.new_tokens <= 16 and answer.model  # the model llama-server lists
    finally:
        process.terminate()
        process.wait(timeout=30)
