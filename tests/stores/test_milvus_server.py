"""The server code path: ingestion against a real Milvus 2.3 standalone (no BM25 there: dense, said clearly)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.settings import Settings, get_settings
from tasks.stores.milvus import Bm25UnavailableError, IndexClient

pytestmark = pytest.mark.integration


@pytest.fixture
def server_env(settings: Settings, milvus_server: str, prefect_harness: None,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    alias = f"docs_{Path(settings.data_dir).parent.name[-12:].replace('-', '_')}"  # the server outlives tests
    for key, value in {"MILVUS__URI": milvus_server, "MILVUS__COLLECTION": alias, "INGEST__PARSE_WORKERS": "1",
                       "MODELS__TORCH_THREADS": "1", "MODELS__BF16": "false"}.items():
        monkeypatch.setenv(f"RAGTUNE_{key}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_ingest_round_trip_on_a_milvus_server(server_env: Settings, tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from tasks.ingest.plan import embedder

    docs = tmp_path / "docs"
    docs.mkdir()
    for topic in ("herons", "otters", "beavers"):
        (docs / f"{topic}.md").write_text(f"# {topic}\n\nThe {topic} build homes by the river {topic}.\n")
    assert ingest_documents(str(docs)).added == 3
    assert ingest_documents(str(docs)).unchanged == 3
    (docs / "otters.md").unlink()
    assert ingest_documents(str(docs)).deleted == 1

    alias = server_env.milvus.collection
    vector = embedder(server_env).encode(["where do beavers build homes"])[0]
    with IndexClient.from_settings(server_env) as index:
        assert not index.has_bm25(alias)
        assert index.count(alias) == 2
        assert index.search_dense(alias, vector, 1)[0].path == "beavers.md"
        assert index.search_hybrid(alias, "beavers", vector, 1)[0].path == "beavers.md"  # degrades to dense
        with pytest.raises(Bm25UnavailableError, match="Milvus >= 2.5"):
            index.search_bm25(alias, "beavers")
