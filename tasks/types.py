"""The index's own types, importable without pymilvus (the answering, dataset and promotion code use them).

Identity: a document's id is a hash of its URI (``doc_id_for``), a chunk's id is the document id plus
its index (``chunk_id``), so re-running an ingestion writes the same keys and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

RECORD_VERSION = 1
METADATA_FIELDS = ("uri", "path", "title", "section", "page", "element_types", "doc_hash", "chunk_index")


def doc_id_for(uri: str) -> str:
    """A stable, filter-safe id for a document URI (hex: never needs quoting in a Milvus filter)."""
    return hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def chunk_id(doc_id: str, chunk_index: int) -> str:
    return f"{doc_id}-{chunk_index:05d}"


@dataclass(frozen=True)
class Chunk:
    """One embeddable piece of a document; ``text`` already carries the title/section path prefix."""

    doc_id: str
    chunk_index: int
    text: str
    uri: str
    path: str = ""
    title: str = ""
    section: str = ""
    page: int = 0
    element_types: tuple[str, ...] = ()
    doc_hash: str = ""

    @property
    def id(self) -> str:
        return chunk_id(self.doc_id, self.chunk_index)

    def metadata(self) -> dict[str, Any]:
        return {"uri": self.uri, "path": self.path, "title": self.title, "section": self.section,
                "page": self.page, "element_types": ",".join(self.element_types), "doc_hash": self.doc_hash,
                "chunk_index": self.chunk_index}


@dataclass(frozen=True)
class Hit:
    """A search result: higher ``score`` is better for every search kind (cosine, BM25, RRF)."""

    id: str
    score: float
    text: str
    doc_id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return str(self.metadata.get("uri", ""))

    @property
    def path(self) -> str:
        return str(self.metadata.get("path", ""))


VECTOR_PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # what IndexMeta.encoder_mismatch accepts


@dataclass(frozen=True)
class IndexMeta:
    """What a collection generation was built with; a writer with different values is refused."""

    embedding_model: str
    dim: int
    chunker: dict[str, Any] = field(default_factory=dict)
    metric: str = "COSINE"
    bm25: bool = True
    record_version: int = RECORD_VERSION
    analyzer: str = ""  # BM25 terms: "" = Milvus' standard tokenizer on the raw text, else tasks.stores.analyzer's name
    # the encoder the creating run was configured with (tasks.ingest.embedding): "torch", "onnx", "onnx-int8",
    # "openvino" or "openvino-int8" on "cpu"/"cuda"; "" = before ragtune recorded it (PyTorch fp32). Recorded
    # before the first text is embedded: an "openvino-int8" run embeds in OpenVINO fp32 until it has its 64
    # calibration texts (all of a corpus smaller than that); its run report says what ran. Every precision of
    # one model searches one space (``encoder_mismatch``), so a collection's vectors may mix them.
    embedding_backend: str = ""
    embedding_precision: str = ""  # fp32, fp16, bf16 or int8; "" = fp32

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> IndexMeta:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def encoder_mismatch(self, model: str, dim: int, backend: str, precision: str) -> str | None:
        """Why vectors from ``model`` run by ``backend`` in ``precision`` cannot search (or join) this index.

        Any precision ragtune runs is compatible with any other of the same model: each backend is checked
        against PyTorch fp32 when it loads (int8 within cosine 0.985 on probe sentences; fp16/bf16/ONNX fp32
        closer still), so int8 documents with fp32 questions, or the reverse, search one space
        (docs/ingestion.md has SciFact's nDCG@10 each way). A different model or dimension never does, nor
        a precision this version does not know (a future binary index, say).
        """
        built = f"{self.embedding_model!r} (dim {self.dim}, {self.embedding_backend or 'torch'} " \
                f"{self.embedding_precision or 'fp32'})"
        if (self.embedding_model, self.dim) != (model, dim):
            return f"it was built with embedding model {built}, not {model!r} (dim {dim}, {backend} {precision})"
        if (self.embedding_precision or "fp32") not in VECTOR_PRECISIONS:
            return f"it was built with embedding model {built}, a precision this ragtune cannot match"
        return None

    def mismatch(self, other: IndexMeta) -> str | None:
        """Why ``other`` (a writer) cannot write into an index built with ``self``; None when it can."""
        why = self.encoder_mismatch(other.embedding_model, other.dim, other.embedding_backend or "torch",
                                    other.embedding_precision or "fp32")
        if why:
            return why.replace("it was built", "the index was built", 1)
        if self.chunker != other.chunker:
            return f"the index was built with chunker settings {self.chunker}, not {other.chunker}"
        return None


@dataclass(frozen=True)
class DocRecord:
    """The index's record of one source document (what was indexed, or why it was quarantined)."""

    doc_id: str
    uri: str
    source: str
    path: str
    size: int
    version: str  # mtime_ns for files, ETag for S3 objects: a cheap "did it change" signal
    content_hash: str
    chunk_count: int = 0
    status: str = "indexed"  # indexed | pending | quarantined
    reason: str = ""
    updated_at: float = 0.0
