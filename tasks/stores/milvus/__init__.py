"""The one package that speaks pymilvus: Milvus Lite (a file URI) and a Milvus server share these verbs.

Index lifecycle: a serving name (``docs``) is an alias; behind it a physical generation
(``docs__g1``). Each generation has a small record collection beside it (``docs__g1__record``)
holding what the index contains per document, so the record survives restarts and cannot drift
from a side file. The generation's properties hold its ``IndexMeta`` (embedding model, dim,
chunker settings): a writer with other values is refused.

Where each verb lives: ``connection`` (opening Milvus, resolving names, loading, the schema's facts),
``generations`` (collections and aliases), ``writes`` (chunk rows and the per-document record),
``reads`` (dense, BM25 and hybrid search; row queries), composed into ``client.IndexClient``.
"""

from tasks.stores.milvus.client import IndexClient, connect
from tasks.stores.milvus.errors import SERVICE_ERRORS, Bm25UnavailableError, IndexMismatchError, MilvusIndexError
from tasks.stores.milvus.fields import META_PROPERTY, RECORD_SUFFIX, TEXT_MAX, generation_name, record_name
from tasks.stores.milvus.reads import SEARCH_CONSISTENCY

__all__ = [
    "META_PROPERTY",
    "RECORD_SUFFIX",
    "SEARCH_CONSISTENCY",
    "SERVICE_ERRORS",
    "TEXT_MAX",
    "Bm25UnavailableError",
    "IndexClient",
    "IndexMismatchError",
    "MilvusIndexError",
    "connect",
    "generation_name",
    "record_name",
]
