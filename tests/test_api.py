"""The HTTP API over a real Milvus Lite and the real models: auth, streaming, limits, clear errors."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from ragtune import stack
from ragtune.api import create_app
from tasks.settings import Settings
from tests.answer.test_retrieval import index_texts

MANUAL = "The Zorblax 3000 vacuum cleaner has a battery life of 90 minutes and charges in 4 hours."
AUTH = {"Authorization": "Bearer s3cret-token"}


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    index_texts(settings, "docs", {"manual.md": MANUAL, "hours.md": "Our office is open 9am to 5pm on weekdays."})
    settings.answer.api_token = SecretStr("s3cret-token")
    return settings


@pytest.fixture
def client(app_settings: Settings) -> TestClient:
    return TestClient(create_app(app_settings), raise_server_exceptions=False)


def test_ask_rejects_a_missing_or_wrong_token(client: TestClient) -> None:
    body = {"question": "How long does the battery last?"}
    missing = client.post("/ask", json=body)
    assert missing.status_code == 401 and missing.json() == {"detail": "missing or wrong bearer token"}
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.post("/ask", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_ask_answers_with_sources(client: TestClient) -> None:
    resp = client.post("/ask", headers=AUTH, json={"question": "How long does the Zorblax battery last?",
                                                    "max_new_tokens": 16, "k": 2})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["collection"] == "docs__g1" and answer["release_id"] is None
    assert answer["sources"][0]["uri"] == "manual.md" and answer["citations"][0]["uri"] == "manual.md"
    assert answer["new_tokens"] <= 16 and answer["timings"]["search_s"] >= 0


def test_ask_streams_ndjson_tokens_then_the_answer(client: TestClient) -> None:
    with client.stream("POST", "/ask", headers=AUTH,
                       json={"question": "How long does the battery last?", "max_new_tokens": 8, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    tokens = [line["token"] for line in lines[:-1]]
    assert len(tokens) >= 2 and "answer" in lines[-1]
    assert "".join(tokens).strip() == lines[-1]["answer"]["text"]


@pytest.mark.parametrize(("body", "status", "match"), [
    ({"question": ""}, 422, "at least 1 character"),
    ({"question": "   "}, 422, "the question is empty"),
    ({"question": "why? " * 500}, 422, "limit is 2000"),
    ({"question": "q", "mode": "fuzzy"}, 422, "dense"),
    ({"question": "q", "k": 0}, 422, "greater than or equal to 1"),
])
def test_bad_requests_get_clear_4xx(client: TestClient, body: dict, status: int, match: str) -> None:
    resp = client.post("/ask", headers=AUTH, json=body)
    assert resp.status_code == status and match in resp.text
    assert "Traceback" not in resp.text


def test_request_size_is_limited(client: TestClient) -> None:
    resp = client.post("/ask", headers=AUTH, json={"question": "x" * 20_000})
    assert resp.status_code == 413 and resp.json() == {"detail": "request body over 16384 bytes"}


def test_unknown_collection_is_404_and_healthz_says_so(app_settings: Settings) -> None:
    app_settings.milvus.collection = "nope"
    client = TestClient(create_app(app_settings), raise_server_exceptions=False)
    resp = client.post("/ask", headers=AUTH, json={"question": "anything"})
    assert resp.status_code == 404 and "no collection or alias 'nope'" in resp.json()["detail"]
    assert client.get("/healthz").status_code == 503


def test_milvus_down_is_503_not_a_traceback(app_settings: Settings) -> None:
    app_settings.milvus.uri = f"http://127.0.0.1:{stack.free_port()}"
    client = TestClient(create_app(app_settings), raise_server_exceptions=False)
    resp = client.post("/ask", headers=AUTH, json={"question": "anything"})
    assert resp.status_code == 503 and "cannot open Milvus" in resp.json()["detail"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


def test_healthz_and_openapi(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["generation"] == "docs__g1"
    schema = client.get("/openapi.json").json()
    assert {"/ask", "/healthz"} <= set(schema["paths"])
