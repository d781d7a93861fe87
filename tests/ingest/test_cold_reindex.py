"""A run checks an existing collection before its embedding model has loaded (the model loads meanwhile, beside
the parser processes' start): first against what the model folder declares, then, before any vector is written,
against the loaded model's own meta. Two tiny models in folders of one name ("tiny") and dimensions 32 and 64
are the hostile case: only the dimension tells them apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.runtime.loading import declared_dimension, load_embedder
from tasks.runtime.sources import embedding_source
from tasks.settings import Settings, get_settings
from tasks.stores.milvus import IndexClient, IndexMismatchError
from tests.ingest.test_embedding_models import _tiny_model


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("twins")
    return _tiny_model(root / "a" / "tiny", "cls"), _tiny_model(root / "b" / "tiny", ("cls", "mean"))


def test_the_declared_dimension_is_the_loaded_models(twins: tuple[Path, Path], tmp_path: Path) -> None:
    for folder in [*twins, embedding_source().path]:
        assert declared_dimension(folder) == load_embedder(str(folder)).get_embedding_dimension()
    lstm = {"path": "0_LSTM", "type": "sentence_transformers.models.LSTM"}
    (tmp_path / "modules.json").write_text(json.dumps([lstm]))
    assert declared_dimension(tmp_path) is None  # a module it does not know: the caller loads the model instead


@pytest.fixture
def tiny_env(env: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("RAGTUNE_MODELS__EMBEDDING_BACKEND", "torch")  # no ONNX export for a test model
    yield monkeypatch
    get_settings.cache_clear()


def _use(monkeypatch: pytest.MonkeyPatch, model: Path) -> Settings:
    monkeypatch.setenv("RAGTUNE_MODELS__EMBEDDING", str(model))
    get_settings.cache_clear()
    return get_settings()


def _state(settings: Settings) -> tuple[dict[str, tuple[str, str]], list[str]]:
    with IndexClient.from_settings(settings) as index:
        records = {d: (r.version, r.status) for d, r in index.read_records("docs").items()}
        texts = sorted(r["text"] for batch in index.iter_rows("docs", fields=["text"]) for r in batch)
    return records, texts


@pytest.mark.flow
def test_a_cold_reindex_refuses_another_dimension_before_writing(tiny_env: pytest.MonkeyPatch, twins: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    from flows.ingest import ingest_documents
    from flows.reindex import reindex_document
    from tasks.ingest import plan
    from tasks.ingest.inventory import open_source

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "okapis.md").write_text("# Okapis\n\nThe okapi lives in the forest and eats leaves.\n")
    built = _use(tiny_env, twins[0])
    ingest_documents(str(docs))
    loaded = plan.embedder(built)
    with IndexClient.from_settings(built) as index:
        meta = index.index_meta("docs")
    assert meta is not None
    assert (meta.embedding_model, meta.dim, meta.embedding_backend, meta.embedding_precision) == \
        (loaded.name, loaded.dim, loaded.backend, loaded.precision) == ("tiny", 32, "torch", "fp32")
    before = _state(built)

    (docs / "okapis.md").write_text("# Okapis\n\nThe okapi is a shy relative of the giraffe.\n")
    uri = f"{open_source(str(docs), built).uri}/okapis.md"
    _use(tiny_env, twins[1])  # the folder declares dim 64: refused before the model has loaded
    with pytest.raises(IndexMismatchError, match=r"built with embedding model 'tiny' \(dim 32.*not 'tiny' \(dim 64"):
        reindex_document([uri])
    assert _state(built) == before

    tiny_env.setattr(plan, "declared_dimension", lambda path: 32)  # a wrong forecast: the loaded model's check
    with pytest.raises(IndexMismatchError, match=r"not 'tiny' \(dim 64, torch fp32\)"):
        reindex_document([uri])
    assert _state(built) == before
