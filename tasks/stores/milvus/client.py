"""``IndexClient``: the verbs of ``generations``, ``writes`` and ``reads`` on one context-managed client."""

from __future__ import annotations

from tasks.settings import Settings
from tasks.stores.milvus.generations import Generations
from tasks.stores.milvus.reads import Reads
from tasks.stores.milvus.writes import Writes


class IndexClient(Generations, Writes, Reads):
    """A context-managed client; every verb takes a collection or alias name.

    The verbs live in three mixins over one ``Connection`` (the pymilvus client and its name and schema
    caches): ``Generations`` (collections, aliases, recorded meta), ``Writes`` (chunk rows and the
    per-document record) and ``Reads`` (dense, BM25 and hybrid search, row queries).
    """

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexClient:
        return cls(settings.milvus_uri, settings.milvus.token.get_secret_value())

    def __enter__(self) -> IndexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(settings: Settings) -> IndexClient:
    return IndexClient.from_settings(settings)
