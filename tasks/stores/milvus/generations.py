"""Collections and aliases: a serving alias, the generations behind it, and the meta each one records.

A serving name (``docs``) is an alias; behind it a physical generation (``docs__g1``) with its record
collection beside it (``docs__g1__record``). The generation's properties hold its ``IndexMeta``
(embedding model, dim, chunker settings, BM25 analyzer): a writer with other values is refused.
"""

from __future__ import annotations

import dataclasses
import re

from pymilvus import DataType, Function, FunctionType, MilvusClient

from tasks.stores.analyzer import ANALYZER
from tasks.stores.milvus.connection import Connection
from tasks.stores.milvus.errors import IndexMismatchError, MilvusIndexError
from tasks.stores.milvus.fields import META_PROPERTY, TEXT_MAX, generation_name, record_name
from tasks.types import IndexMeta


class Generations(Connection):
    """Create, serve (alias), check and drop generations."""

    def server_supports_bm25(self) -> bool:
        """Milvus Lite and Milvus >= 2.5 compute a BM25 sparse field server-side; Milvus 2.3/2.4 cannot."""
        version = self._c.get_server_version()
        if version.startswith("milvus_lite"):
            return True
        found = re.search(r"(\d+)\.(\d+)", version)
        return found is not None and (int(found[1]), int(found[2])) >= (2, 5)

    def list_generations(self, alias: str) -> list[str]:
        pattern = re.compile(rf"^{re.escape(alias)}__g(\d+)$")
        found = [(int(m[1]), n) for n in self._c.list_collections() if (m := pattern.match(n))]
        return [n for _, n in sorted(found)]

    def ensure_generation(self, alias: str, meta: IndexMeta) -> str:
        """The generation ``alias`` serves, created as g1 (+ alias) when none exists; checks ``meta``."""
        physical = self.resolve(alias)
        if physical is None:
            physical = self.create_generation(alias, meta)
            self.set_alias(alias, physical)
        self.check_meta(physical, meta)
        return physical

    def create_generation(self, alias: str, meta: IndexMeta, name: str | None = None) -> str:
        """A new empty generation beside the live one (not served until ``set_alias``).

        ``name``: a given generation name (a snapshot restore keeps the release's generation name).
        """
        existing = self.list_generations(alias)
        n = int(existing[-1].rsplit("__g", 1)[1]) + 1 if existing else 1
        name = name or generation_name(alias, n)
        bm25 = meta.bm25 and self.server_supports_bm25()
        final = dataclasses.replace(meta, bm25=bm25, analyzer=ANALYZER if bm25 else "")
        self._create_chunks(name, final)
        self._create_record(record_name(name))
        return name

    def check_meta(self, collection: str, meta: IndexMeta) -> None:
        built = self.index_meta(collection)
        if built is None:
            raise IndexMismatchError(f"{collection} has no ragtune metadata: it was not created by ragtune")
        why = built.mismatch(meta)
        if why:
            raise IndexMismatchError(f"refusing to write into {collection}: {why}. Build a new generation "
                                     "(ragtune ingest --rebuild) and promote it instead.")

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` (create or switch; atomic for readers)."""
        if self.describe_alias(alias) is None:
            self._c.create_alias(collection, alias)
        else:
            self._c.alter_alias(collection, alias)

    def drop_collection(self, collection: str) -> None:
        """Drop a generation and its record; refuses one that an alias still serves."""
        live = collection in self._c.list_collections()
        aliases = self._c.list_aliases(collection).get("aliases", []) if live else []
        if aliases:
            raise MilvusIndexError(f"{collection} is served by alias {aliases}: switch the alias first")
        for name in (collection, record_name(collection)):
            if self._c.has_collection(name):
                self._c.drop_collection(name)
            self._schemas.pop(name, None)
            self._loaded.discard(name)
            self._collections.discard(name)

    def index_progress(self, collection: str) -> tuple[int, bool]:
        """Rows the vector index covers and whether its build has finished (a server builds in the background)."""
        physical = self.resolve(collection)
        if physical is None:
            raise MilvusIndexError(f"no collection or alias {collection!r} at {self.uri}")
        info = self._c.describe_index(physical, "vector")
        return int(info.get("indexed_rows", 0)), info.get("state", "Finished") == "Finished"

    # --- schemas ----------------------------------------------------------------------------------
    def _create_chunks(self, name: str, meta: IndexMeta) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=meta.dim)
        lexical = meta.bm25 and bool(meta.analyzer)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX, enable_analyzer=meta.bm25 and not lexical)
        if lexical:
            schema.add_field("lexical", DataType.VARCHAR, max_length=TEXT_MAX, enable_analyzer=True)
        for field in ("uri", "path", "title", "section", "element_types"):
            schema.add_field(field, DataType.VARCHAR, max_length=2048)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("page", DataType.INT64)
        schema.add_field("chunk_index", DataType.INT64)
        index = self._c.prepare_index_params()
        index.add_index("vector", index_type="AUTOINDEX", metric_type=meta.metric)
        if meta.bm25:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                         input_field_names=["lexical" if lexical else "text"],
                                         output_field_names=["sparse"]))
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self._c.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                                  properties={META_PROPERTY: meta.to_json()})

    def _create_record(self, name: str) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("doc_id", DataType.VARCHAR, is_primary=True, max_length=64)
        for field in ("uri", "source", "path", "reason"):
            schema.add_field(field, DataType.VARCHAR, max_length=4096)
        for field in ("version", "content_hash", "status"):
            schema.add_field(field, DataType.VARCHAR, max_length=128)
        schema.add_field("size", DataType.INT64)
        schema.add_field("chunk_count", DataType.INT64)
        schema.add_field("updated_at", DataType.DOUBLE)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field
        index = self._c.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        self._c.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
