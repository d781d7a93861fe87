"""Retrieval and answering on a real Milvus Lite with the real models."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from tasks.answer import retrieval
from tasks.answer.answering import QuestionError, ask
from tasks.answer.retrieval import RetrievalError, encode_queries, query_embedder, retrieve
from tasks.runtime.cpu import configure_torch
from tasks.runtime.sources import EMBEDDING_MODEL_NAME
from tasks.settings import Settings
from tasks.stores import milvus
from tasks.types import Chunk, IndexMeta, doc_id_for

TOPICS = ["resetting a forgotten password", "replacing the printer toner", "configuring the VPN client",
          "exporting invoices to CSV", "enabling two-factor login", "restoring a deleted mailbox",
          "updating the laptop BIOS", "mapping a network drive", "renewing the TLS certificate",
          "migrating the calendar", "clearing the browser cache", "installing the docking station driver"]


def article_ids() -> list[str]:
    """Permutations of one digit string: identifiers a sentence embedding cannot tell apart."""
    rng, found = random.Random(3), set()
    while len(found) < len(TOPICS):
        digits = list("4471829")
        rng.shuffle(digits)
        found.add("KB" + "".join(digits))
    return sorted(found)


def index_texts(settings: Settings, alias: str, docs: dict[str, str], model: str = EMBEDDING_MODEL_NAME) -> None:
    """One chunk per document, embedded with the query encoder, written and flushed."""
    chunks = [Chunk(doc_id_for(uri), 0, text, uri, path=uri) for uri, text in docs.items()]
    vectors = encode_queries(settings, [c.text for c in chunks])
    with milvus.connect(settings) as index:
        name = index.ensure_generation(alias, IndexMeta(model, int(vectors.shape[1]), {"test": True}))
        index.upsert_chunks(name, chunks, vectors)
        index.flush(name)


@pytest.fixture
def kb(settings: Settings) -> Settings:
    configure_torch(1)
    pairs = zip(article_ids(), TOPICS, strict=True)
    docs = {f"kb/{a}.md": f"Knowledge base article {a}: a guide to {t}." for a, t in pairs}
    docs["manual.md"] = "The Zorblax 3000 vacuum cleaner has a battery life of 90 minutes and charges in 4 hours."
    index_texts(settings, "docs", docs)
    return settings


def top_uri(settings: Settings, question: str, mode: str) -> str:
    return retrieve(settings, "docs", question, 3, mode).hits[0].uri


def test_hybrid_finds_an_exact_identifier_that_dense_misses(kb: Settings) -> None:
    target = article_ids()[3]
    found = retrieve(kb, "docs", f"What is {target} about?", 3, "dense")
    assert found.mode == "dense" and found.hits[0].uri != f"kb/{target}.md"
    assert top_uri(kb, f"What is {target} about?", "bm25") == f"kb/{target}.md"
    assert top_uri(kb, f"What is {target} about?", "hybrid") == f"kb/{target}.md"
    assert set(found.timings) == {"embed_s", "search_s"} and found.collection == "docs__g1"


def test_bm25_matches_word_forms_and_identifier_parts(settings: Settings) -> None:
    """The index stems and drops stop words: "scaling" finds "scale", "map batches" finds map_batches."""
    index_texts(settings, "docs", {"a.md": "Replicas scale with the length of the request queue.",
                                   "b.md": "Call Dataset.map_batches on the dataset.",
                                   "c.md": "The cat sat on the mat, and that is all there is to it."})
    assert top_uri(settings, "How is scaling of a replica done?", "bm25") == "a.md"
    assert top_uri(settings, "what do map batches do", "bm25") == "b.md"
    assert retrieve(settings, "docs", "the that is", 3, "bm25").hits == []  # stop words only: no terms, no error


def test_by_default_a_page_fills_one_of_the_k_slots_until_every_page_has_one(settings: Settings) -> None:
    """Two chunks of one page cannot both take the top 2 while another page is cut off; with fewer pages than k
    the pages' further chunks fill the rest; ``chunks_per_page=0`` restores the plain chunk ranking."""
    texts = ["The vacuum battery lasts 90 minutes.", "Charge the vacuum battery for 4 hours.",
             "The vacuum battery can be replaced."]
    chunks = [Chunk(doc_id_for("guide.md"), i, t, "guide.md", path="guide.md") for i, t in enumerate(texts)]
    chunks.append(Chunk(doc_id_for("other.md"), 0, "Replacing the printer toner.", "other.md", path="other.md"))
    vectors = encode_queries(settings, [c.text for c in chunks])
    with milvus.connect(settings) as index:
        name = index.ensure_generation("docs", IndexMeta(EMBEDDING_MODEL_NAME, int(vectors.shape[1]), {"test": True}))
        index.upsert_chunks(name, chunks, vectors)
        index.flush(name)
    plain = settings.model_copy(update={"answer": settings.answer.model_copy(update={"chunks_per_page": 0})})
    assert settings.answer.chunks_per_page == 1
    for mode in ("dense", "hybrid"):
        assert [h.path for h in retrieve(settings, "docs", "vacuum battery", 2, mode).hits] == ["guide.md", "other.md"]
        assert [h.path for h in retrieve(plain, "docs", "vacuum battery", 2, mode).hits] == ["guide.md"] * 2
        four = retrieve(settings, "docs", "vacuum battery", 4, mode).hits
        assert [h.path for h in four] == ["guide.md", "other.md", "guide.md", "guide.md"]
        assert {h.id for h in four} == {h.id for h in retrieve(plain, "docs", "vacuum battery", 4, mode).hits}


def test_dense_retrieval_ranks_by_meaning(kb: Settings) -> None:
    hits = retrieve(kb, "docs", "how many minutes does the vacuum run on one charge", 3, "dense").hits
    assert hits[0].uri == "manual.md" and hits[0].score > hits[1].score


def test_answer_cites_the_indexed_document(kb: Settings) -> None:
    stream = ask(kb, "How long does the Zorblax 3000 battery last?", k=3, mode="hybrid", max_new_tokens=20)
    pieces = list(stream)
    answer = stream.answer
    assert answer is not None and "".join(pieces).strip() == answer.text
    assert "90" in answer.text
    assert answer.citations and answer.citations[0].uri == "manual.md"
    assert answer.collection == "docs__g1" and answer.model.endswith("SmolLM2-135M-Instruct")
    assert answer.release_id is None and answer.sources[0]["uri"] == "manual.md"
    assert {"embed_s", "search_s", "generate_s", "first_token_s"} <= set(answer.timings)


def test_one_query_encoder_per_process_and_questions_in_full_precision(settings: Settings,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`ragtune serve` loads the query encoder once; under the auto backend questions run fp32 (never int8),
    with the vectors PyTorch fp32 gives."""
    monkeypatch.setattr(retrieval, "_EMBEDDERS", {})  # this test's encoder must not leak into other tests
    questions = ["How long does the battery last?", "Which port does the metrics endpoint use on the server?"]
    encoder = query_embedder(settings)
    assert query_embedder(settings) is encoder and encoder.precision == "fp32"
    torch_settings = settings.model_copy(update={"models": settings.models.model_copy(
        update={"embedding_backend": "torch"})})
    reference = query_embedder(torch_settings).encode_queries(questions)
    np.testing.assert_allclose(encoder.encode_queries(questions), reference, atol=1e-4)


def test_an_open_client_sees_an_alias_switched_by_another(kb: Settings) -> None:
    """The serving client knows ``docs`` as an alias after its first question and then asks Milvus only where
    it points (one RPC): a promotion elsewhere must still take effect on its next question."""
    question = "How long does the Zorblax 3000 battery last?"
    with milvus.connect(kb) as serving:
        assert retrieve(kb, "docs", question, 1, "dense", serving).collection == "docs__g1"
        with milvus.connect(kb) as promoter:
            gen = promoter.create_generation("docs", promoter.index_meta("docs__g1"))  # type: ignore[arg-type]
            text = "The Zorblax 3000 battery lasts 120 minutes since the firmware update."
            chunk = Chunk(doc_id_for("manual-v2.md"), 0, text, "manual-v2.md", path="manual-v2.md")
            promoter.upsert_chunks(gen, [chunk], encode_queries(kb, [text]))
            promoter.flush(gen)
            promoter.set_alias("docs", gen)
        found = retrieve(kb, "docs", question, 1, "dense", serving)
        assert (found.collection, found.hits[0].uri) == ("docs__g2", "manual-v2.md")
        assert serving.resolve("docs__g1") == "docs__g1"  # the old generation is still there, by its own name


def test_a_collection_built_with_another_model_is_refused(settings: Settings) -> None:
    index_texts(settings, "other", {"a.md": "text"}, model="some/other-model")
    with pytest.raises(RetrievalError, match="some/other-model"):
        retrieve(settings, "other", "text", 3, "dense")


@pytest.mark.parametrize(("question", "mode", "error", "match"), [
    ("  ", None, QuestionError, "empty"),
    ("x" * 5000, None, QuestionError, "limit is 2000"),
    ("fine", "fuzzy", RetrievalError, "unknown retrieval mode"),
])
def test_bad_questions_fail_clearly(kb: Settings, question: str, mode: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ask(kb, question, mode=mode)


def test_an_unknown_collection_fails_clearly(settings: Settings) -> None:
    with pytest.raises(RetrievalError, match="no collection or alias 'nope'"):
        retrieve(settings, "nope", "q", 3, "dense")


@pytest.mark.flow
def test_answer_cites_a_document_ingested_by_the_flow(settings: Settings, tmp_path: Any, prefect_harness: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest_documents
    from tasks.settings import get_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zorblax.md").write_text("# Zorblax 3000 manual\n\n## Battery\n\nThe Zorblax 3000 vacuum cleaner has a "
                                     "battery life of 90 minutes and charges in 4 hours.\n")
    (docs / "office.md").write_text("# Office\n\nOur office is open Monday to Friday from 9am to 5pm.\n")
    monkeypatch.setenv("RAGTUNE_MODELS__TORCH_THREADS", "1")
    get_settings.cache_clear()
    try:
        ingest_documents(str(docs), "docs")
        answer = ask(get_settings(), "How long does the Zorblax 3000 battery last?", k=2, max_new_tokens=20).complete()
    finally:
        get_settings.cache_clear()
    assert "90" in answer.text
    assert answer.citations[0].uri.endswith("zorblax.md") and answer.citations[0].section.endswith("Battery")


@pytest.mark.integration
def test_a_milvus_server_without_bm25_degrades_hybrid_to_dense(settings: Settings, milvus_server: str) -> None:
    """Milvus 2.3 has no BM25 function: hybrid answers dense with a note; bm25 says why it cannot."""
    settings.milvus.uri = milvus_server
    alias = f"docs_{random.Random().randrange(10**6)}"
    index_texts(settings, alias, {"manual.md": "The Zorblax 3000 battery lasts 90 minutes."})
    found = retrieve(settings, alias, "How long does the battery last?", 1, "hybrid")
    assert found.mode == "dense" and "no BM25 field" in found.note and found.hits[0].uri == "manual.md"
    with pytest.raises(RetrievalError, match="no BM25 field"):
        retrieve(settings, alias, "battery", 1, "bm25")
