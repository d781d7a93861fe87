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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> IndexMeta:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def mismatch(self, other: IndexMeta) -> str | None:
        """Why ``other`` (a writer) cannot write into an index built with ``self``; None when it can."""
        if (self.embedding_model, self.dim) != (other.embedding_model, other.dim):
            return (f"the index was built with embedding model {self.embedding_model!r} (dim {self.dim}), "
                    f"not {other.embedding_model!r} (dim {other.dim})")
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
