"""`ragtune serve`'s OpenAI chat completions API, spoken to by the official `openai` client over real HTTP: a
uvicorn server on a free loopback port, a real Milvus Lite index, the real generator."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import openai
import pytest
import uvicorn
from pydantic import SecretStr

from ragtune.api import create_app
from tasks.runtime.sources import GENERATOR_MODEL_NAME
from tasks.settings import Settings
from tests.answer.test_retrieval import index_texts

MANUAL = "The Zorblax 3000 vacuum cleaner has a battery life of 90 minutes and charges in 4 hours."
QUESTION = "How long does the Zorblax battery last?"
TOKEN = "s3cret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    """The app on a real uvicorn server in a thread, for the test's lifetime."""
    index_texts(settings, "docs", {"manual.md": MANUAL, "hours.md": "Our office is open 9am to 5pm on weekdays."})
    settings.answer.api_token = SecretStr(TOKEN)
    settings.models.torch_threads = 1
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0)


def test_models_lists_the_index_answerer_and_the_served_model(client: openai.OpenAI, base_url: str) -> None:
    assert [m.id for m in client.models.list()] == ["ragtune", GENERATOR_MODEL_NAME]
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    assert err.value.body == {"message": "missing or wrong bearer token", "type": "authentication_error",
                              "param": None, "code": None}


def test_a_completion_answers_from_the_index_with_citations(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="ragtune", max_tokens=8,
        messages=[{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": QUESTION}])
    assert reply.object == "chat.completion" and reply.model == "ragtune"
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 50
    extra = reply.model_extra or {}
    assert extra["sources"][0]["uri"] == "manual.md"
    assert all(c["uri"] in ("manual.md", "hours.md") for c in extra["citations"])
    assert extra["ragtune"]["collection"] == "docs__g1" and extra["ragtune"]["engine"] == "transformers"
    assert extra["ragtune"]["model"] == GENERATOR_MODEL_NAME


def test_a_stream_sends_deltas_then_citations_usage_and_done(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="ragtune", max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert (final.model_extra or {})["sources"][0]["uri"] == "manual.md"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 8
    assert len({c.id for c in chunks}) == 1


def test_the_served_model_completes_messages_as_given(client: openai.OpenAI) -> None:
    """No retrieval: what another ragtune's engine path sends its own prompt to."""
    reply = client.chat.completions.create(model=GENERATOR_MODEL_NAME, max_tokens=4,
                                           messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content and (reply.model_extra or {})["sources"] == []
    streamed = client.chat.completions.create(model=GENERATOR_MODEL_NAME, max_tokens=4, stream=True,
                                              messages=[{"role": "user", "content": "Say hello."}])
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text.strip() == reply.choices[0].message.content


def test_errors_have_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": QUESTION}])
    assert missing.value.code == "model_not_found" and "this server has ragtune" in missing.value.message
    with pytest.raises(openai.UnprocessableEntityError, match="the question is empty"):
        client.chat.completions.create(model="ragtune", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="ragtune", messages=[])
