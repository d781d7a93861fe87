"""The open pymilvus client the verbs share: opening Milvus, resolving names, loading, the schema's facts.

Every verb takes a collection or an alias name; ``_use`` turns it into the physical collection,
loaded for search. The mixins in ``generations``, ``writes`` and ``reads`` build on this class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from tasks.stores.milvus.errors import MilvusIndexError
from tasks.stores.milvus.fields import META_PROPERTY, RECORD_SUFFIX, record_name
from tasks.types import IndexMeta

log = logging.getLogger("tasks.stores.milvus")


class _LiteNoise(logging.Filter):
    """Milvus Lite lacks two RPCs pymilvus tries first (AllocTimestamp, iterator mvccTs) and falls back
    correctly; the tracebacks it logs on the way are noise, not failures."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "mvccTs" not in msg and "Method not implemented" not in msg


for _name in ("pymilvus.client.iterator.query_iterator", "grpc._server"):
    logging.getLogger(_name).addFilter(_LiteNoise())


def _grpc_options(uri: str) -> dict[str, Any]:
    """Milvus Lite: no keepalive pings on an idle channel. A busy process (a GGUF conversion in `ragtune
    demo`) got GOAWAY "too_many_pings" from the Lite server and the channel never recovered."""
    return {} if "://" in uri else {"grpc_options": {"grpc.keepalive_permit_without_calls": False}}


class Connection:
    """One pymilvus client (Milvus Lite file or server URI) and what it has learnt about names and schemas."""

    def __init__(self, uri: str, token: str = "", timeout: float = 60.0):
        self.uri = uri
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._c = MilvusClient(uri=uri, token=token, timeout=timeout, **_grpc_options(uri))
        except MilvusException as exc:
            hint = "" if "://" in uri else (" (a Milvus Lite file opens in one process at a time: stop the other "
                                             "process, or point RAGTUNE_MILVUS__URI at a Milvus server)")
            raise MilvusIndexError(f"cannot open Milvus at {uri}: {exc.message}{hint}") from None
        self._schemas: dict[str, dict[str, Any]] = {}
        self._loaded: set[str] = set()
        # Names this client has seen as collections and as aliases. A collection name keeps its meaning, so
        # verbs given one skip resolution (an RPC; it was once per verb, several per question: timings in
        # docs/retrieval.md); an alias can be switched by another process at any moment, so it is asked about
        # every time, with the one call that answers it (describe_alias) once the name is known to be an alias.
        self._collections: set[str] = set()
        self._aliases: set[str] = set()

    def close(self) -> None:
        self._c.close()

    # --- names ------------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return self.resolve(name) is not None

    def resolve(self, name: str) -> str | None:
        """The physical collection behind an alias (or the name itself when it is a collection), asked of Milvus."""
        if name in self._aliases and (physical := self._alias_target(name)) is not None:
            return physical
        if name in self._c.list_collections():
            self._collections.add(name)
            return name
        return self.describe_alias(name)

    def names(self) -> list[str]:
        """Every name a search can be given here: aliases and chunk collections (their record collections left out)."""
        aliases = self._c.list_aliases().get("aliases", [])
        collections = [n for n in self._c.list_collections() if not n.endswith(RECORD_SUFFIX)]
        return sorted({*aliases, *collections})

    def describe_alias(self, alias: str) -> str | None:
        if alias not in self._c.list_aliases().get("aliases", []):
            self._aliases.discard(alias)
            return None  # asking about an absent alias makes pymilvus log a traceback
        return self._alias_target(alias)

    def _alias_target(self, alias: str) -> str | None:
        try:
            physical = str(self._c.describe_alias(alias)["collection_name"])
        except MilvusException:
            self._aliases.discard(alias)
            return None
        self._aliases.add(alias)
        self._collections.add(physical)
        return physical

    def _physical(self, name: str) -> str | None:
        """``resolve`` without the RPC for a name this client already knows as a collection."""
        return name if name in self._collections else self.resolve(name)

    # --- loading and the schema -------------------------------------------------------------------
    def ensure_loaded(self, collection: str) -> None:
        """Load a generation for search (once per client): a fresh process finds Milvus Lite collections released."""
        self._use(collection)

    def _use(self, name: str) -> str:
        """The physical collection behind ``name``, loaded (a reopened Milvus Lite file starts released)."""
        physical = self._physical(name)
        if physical is None:
            raise MilvusIndexError(f"no collection or alias {name!r} at {self.uri}: run `ragtune ingest` first")
        if physical not in self._loaded:
            for target in (physical, record_name(physical)):
                if self._c.has_collection(target) and "Loaded" not in str(self._c.get_load_state(target)["state"]):
                    self._c.load_collection(target)
                self._loaded.add(target)
        return physical

    def _describe(self, collection: str) -> dict[str, Any]:
        physical = self._physical(collection)
        if physical is None:
            raise MilvusIndexError(f"no collection or alias {collection!r} at {self.uri}: run `ragtune ingest` first")
        if physical not in self._schemas:
            self._schemas[physical] = self._c.describe_collection(physical)
        return self._schemas[physical]

    def index_meta(self, collection: str) -> IndexMeta | None:
        """The ``IndexMeta`` recorded in the generation's properties (None: not created by ragtune)."""
        raw = self._describe(collection).get("properties", {}).get(META_PROPERTY)
        return IndexMeta.from_json(raw) if raw else None

    def has_bm25(self, collection: str) -> bool:
        return any(f["name"] == "sparse" for f in self._describe(collection)["fields"])

    def hybrid_capable(self, collection: str) -> bool:
        """Whether hybrid search can use BM25 here; without it (Milvus server < 2.5) it degrades to dense, said once
        per search in the log."""
        if self.has_bm25(collection):
            return True
        log.warning("%s has no BM25 field (Milvus server < 2.5): hybrid search degrades to dense", collection)
        return False

    def _lexical(self, collection: str) -> bool:
        """Whether the generation's BM25 input is the analysed ``lexical`` field (else ``text`` as it is)."""
        return any(f["name"] == "lexical" for f in self._describe(collection)["fields"])
