"""Names, field lists, byte limits and filter expressions the index verbs share."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.types import METADATA_FIELDS, DocRecord

META_PROPERTY = "ragtune.meta"
RECORD_SUFFIX = "__record"
TEXT_MAX = 65535
CHUNK_FIELDS = ("id", "doc_id", "text", *METADATA_FIELDS)
RECORD_FIELDS = tuple(DocRecord.__dataclass_fields__)


def generation_name(alias: str, n: int) -> str:
    return f"{alias}__g{n}"


def record_name(collection: str) -> str:
    return collection + RECORD_SUFFIX


def clip(text: str, max_bytes: int = TEXT_MAX) -> str:
    """Milvus VARCHAR limits are in bytes: cut on a character boundary below the limit."""
    raw = text.encode("utf-8", "replace")
    return text if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", "ignore")


def quote(value: str) -> str:
    """A string literal for a Milvus filter expression."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def in_list(values: Sequence[str]) -> str:
    """A list literal for a Milvus ``in`` filter."""
    return "[" + ",".join(quote(v) for v in values) + "]"
