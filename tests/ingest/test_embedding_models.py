"""Any sentence-transformers model: CLS pooling and query/document prompts come from the model's own config.

The models are tiny random-weight BERTs built here, offline, from a config and a word-piece vocabulary:
what matters is that ragtune's Embedder gives sentence-transformers' own vectors for them, on every backend.
A collection built with one model refuses queries and writers of another with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.ingest.embedding import Embedder
from tasks.settings import Settings
from tasks.types import IndexMeta

WORDS = """how do i scale a deployment ray serve replicas handle requests in parallel across the cluster what
happens when an actor dies data streams blocks between operators query passage : ? . ,"""
TEXTS = ["How do I scale a deployment?", "Ray Serve replicas handle requests in parallel across the cluster. " * 3,
         "What happens when an actor dies?", "Data streams blocks between operators.", "unknown words here"]


def _tiny_model(folder: Path, pooling: str, prompts: dict[str, str] | None = None, normalize: bool = True) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    raw = folder.with_name(folder.name + "-raw")
    raw.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS.split())]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(raw)  # a WordPiece vocabulary
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    modules = [transformer, Pooling(32, pooling_mode=pooling)] + ([Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, prompts=prompts).save(str(folder))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"cls": _tiny_model(root / "tiny-cls", "cls"),
            "prompts": _tiny_model(root / "tiny-e5", "mean", {"query": "query: ", "document": "passage: "},
                                   normalize=False)}


def _embedder(settings: Settings, path: Path, backend: str) -> Embedder:
    return Embedder(settings.models.model_copy(update={"embedding": str(path)}), threads=1,
                    cache_dir=settings.cache_dir, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
@pytest.mark.parametrize("kind", ["cls", "prompts"])
def test_ragtune_gives_sentence_transformers_own_vectors(settings: Settings, models: dict[str, Path], kind: str,
                                                         backend: str) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(models[kind]), device="cpu", local_files_only=True)
    ours = _embedder(settings, models[kind], backend)
    assert ours.name == models[kind].name and ours.dim == 32
    documents = reference.encode_document(TEXTS, normalize_embeddings=True)
    queries = reference.encode_query(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(ours.encode(TEXTS, batch_size=2), documents, atol=1e-4)
    np.testing.assert_allclose(ours.encode_queries(TEXTS, batch_size=2), queries, atol=1e-4)
    if kind == "prompts":  # the prompts reach the model: a question and a passage of the same words differ
        assert np.abs(documents - queries).max() > 1e-3
        assert reference.prompts["query"] == "query: "


def test_cls_pooling_is_not_mean_pooling(settings: Settings, models: dict[str, Path]) -> None:
    """The tiny CLS model really pools the first token (a mean-pooling embedder would not match it)."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(models["cls"]), device="cpu", local_files_only=True)
    hidden = reference.encode(TEXTS[:1], output_value="token_embeddings")[0].numpy()
    cls, mean = hidden[0], hidden.mean(axis=0)
    ours = _embedder(settings, models["cls"], "torch").encode(TEXTS[:1])[0]
    assert np.allclose(ours, cls / np.linalg.norm(cls), atol=1e-5)
    assert not np.allclose(ours, mean / np.linalg.norm(mean), atol=1e-3)


@pytest.mark.flow
@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_a_collection_refuses_queries_and_writers_of_another_model(settings: Settings, models: dict[str, Path],
                                                                    backend: str) -> None:
    from tasks.answer.retrieval import RetrievalError, check_model
    from tasks.ingest.plan import index_meta
    from tasks.stores import milvus
    from tasks.stores.milvus.errors import IndexMismatchError

    built = index_meta(settings.model_copy(update={"models": settings.models.model_copy(
        update={"embedding_backend": backend})}))
    assert (built.embedding_backend, built.embedding_precision) == (backend, "int8")
    other = settings.model_copy(update={"models": settings.models.model_copy(
        update={"embedding": str(models["cls"]), "embedding_backend": "torch"})})
    fp32 = settings.model_copy(update={"models": settings.models.model_copy(update={"embedding_backend": "torch"})})
    with milvus.connect(settings) as index:
        physical = index.ensure_generation("docs", built)
        with pytest.raises(RetrievalError, match=r"built with embedding model 'sentence-transformers/all-MiniLM"
                                                 rf".*{backend} int8\), not 'tiny-cls' \(dim 32, torch fp32\)"):
            check_model(index, "docs", other)
        with pytest.raises(IndexMismatchError, match="refusing to write.*not 'tiny-cls'"):
            index.ensure_generation("docs", index_meta(other))
        # int8 documents, fp32 questions: one vector space (stated and measured in docs/ingestion.md)
        assert check_model(index, "docs", fp32) == physical


def test_a_precision_this_version_does_not_know_is_refused() -> None:
    meta = IndexMeta("m", 384, embedding_backend="future", embedding_precision="binary")
    assert "a precision this ragtune cannot match" in (meta.encoder_mismatch("m", 384, "torch", "fp32") or "")
    legacy = IndexMeta("m", 384)  # recorded before backends: PyTorch fp32
    assert legacy.encoder_mismatch("m", 384, "onnx-int8", "int8") is None
    assert "dim 384" in (legacy.encoder_mismatch("m", 768, "torch", "fp32") or "")


def test_loading_any_model_needs_no_network(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder is read offline: with the hub unreachable the tiny model still loads."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from tasks.runtime.loading import load_embedder

    model: Any = load_embedder(str(models["prompts"]))
    assert model.prompts["document"] == "passage: "
