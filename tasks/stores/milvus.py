"""The one module that speaks pymilvus: Milvus Lite (a file URI) and a Milvus server share these verbs.

Index lifecycle: a serving name (``docs``) is an alias; behind it a physical generation
(``docs__g1``). Each generation has a small record collection beside it (``docs__g1__record``)
holding what the index contains per document, so the record survives restarts and cannot drift
from a side file. The generation's properties hold its ``IndexMeta`` (embedding model, dim,
chunker settings): a writer with other values is refused.

BM25: Milvus Lite 3.2 and Milvus >= 2.5 compute a sparse BM25 field server-side; Milvus 2.3/2.4
cannot, so such a generation is dense only and bm25 search says so clearly. The BM25 input is the
``lexical`` field: the chunk text analysed by ``tasks.stores.analyzer`` (stemmed, stop words out), and
queries are analysed the same way. Generations built before it index ``text`` as it is.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pymilvus import AnnSearchRequest, DataType, Function, FunctionType, MilvusClient, RRFRanker
from pymilvus.exceptions import MilvusException

from tasks.settings import Settings
from tasks.stores.analyzer import ANALYZER, analyze
from tasks.types import METADATA_FIELDS, Chunk, DocRecord, Hit, IndexMeta

META_PROPERTY = "ragtune.meta"
# Searches read with Session consistency: the writing process sees its own writes, every other reader
# reads what the server has without waiting for its next time tick -- Strong made each search on a
# Milvus 2.3 server wait ~200 ms for one (bench/query.py). Flushed data is visible to every reader.
SEARCH_CONSISTENCY = "Session"
RECORD_SUFFIX = "__record"
log = logging.getLogger(__name__)


class _LiteNoise(logging.Filter):
    """Milvus Lite lacks two RPCs pymilvus tries first (AllocTimestamp, iterator mvccTs) and falls back
    correctly; the tracebacks it logs on the way are noise, not failures."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "mvccTs" not in msg and "Method not implemented" not in msg


for _name in ("pymilvus.client.iterator.query_iterator", "grpc._server"):
    logging.getLogger(_name).addFilter(_LiteNoise())
TEXT_MAX = 65535
_FIELDS = ("id", "doc_id", "text", *METADATA_FIELDS)
_RECORD_FIELDS = tuple(DocRecord.__dataclass_fields__)


class MilvusIndexError(RuntimeError):
    """Milvus refused or cannot do what was asked; the message says what to do."""


class IndexMismatchError(MilvusIndexError):
    """A writer's embedding model or chunker differs from the one the generation was built with."""


class Bm25UnavailableError(MilvusIndexError):
    """The collection has no BM25 sparse field (Milvus server < 2.5)."""


# What readers catch for "Milvus is down or refused the call", without importing pymilvus themselves.
SERVICE_ERRORS: tuple[type[Exception], ...] = (MilvusException, MilvusIndexError)


def _grpc_options(uri: str) -> dict[str, Any]:
    """Milvus Lite: no keepalive pings on an idle channel. A busy process (a GGUF conversion in `ragtune
    demo`) got GOAWAY "too_many_pings" from the Lite server and the channel never recovered."""
    return {} if "://" in uri else {"grpc_options": {"grpc.keepalive_permit_without_calls": False}}


def generation_name(alias: str, n: int) -> str:
    return f"{alias}__g{n}"


def record_name(collection: str) -> str:
    return collection + RECORD_SUFFIX


class IndexClient:
    """A context-managed client; every verb takes a collection or alias name."""

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
        # verbs given one skip resolution (an RPC, ~1.3-2.8 ms, was once per verb: several per question);
        # an alias can be switched by another process at any moment, so it is asked about every time, with
        # the one call that answers it (describe_alias) once the name is known to be an alias.
        self._collections: set[str] = set()
        self._aliases: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexClient:
        return cls(settings.milvus_uri, settings.milvus.token.get_secret_value())

    def __enter__(self) -> IndexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._c.close()

    # --- capabilities and lifecycle -------------------------------------------------------------
    def server_supports_bm25(self) -> bool:
        version = self._c.get_server_version()
        if version.startswith("milvus_lite"):
            return True
        found = re.search(r"(\d+)\.(\d+)", version)
        return found is not None and (int(found[1]), int(found[2])) >= (2, 5)

    def ensure_loaded(self, collection: str) -> None:
        """Load a generation for search (once per client): a fresh process finds Milvus Lite collections released."""
        self._use(collection)

    def has_bm25(self, collection: str) -> bool:
        return any(f["name"] == "sparse" for f in self._describe(collection)["fields"])

    def hybrid_capable(self, collection: str) -> bool:
        """Whether hybrid search can use BM25 here; without it (Milvus server < 2.5) it degrades to dense, said once
        per search in the log."""
        if self.has_bm25(collection):
            return True
        log.warning("%s has no BM25 field (Milvus server < 2.5): hybrid search degrades to dense", collection)
        return False

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
        final = IndexMeta(meta.embedding_model, meta.dim, meta.chunker, meta.metric, bm25, meta.record_version,
                          ANALYZER if bm25 else "")
        self._create_chunks(name, final)
        self._create_record(record_name(name))
        return name

    def index_meta(self, collection: str) -> IndexMeta | None:
        raw = self._describe(collection).get("properties", {}).get(META_PROPERTY)
        return IndexMeta.from_json(raw) if raw else None

    def check_meta(self, collection: str, meta: IndexMeta) -> None:
        built = self.index_meta(collection)
        if built is None:
            raise IndexMismatchError(f"{collection} has no ragtune metadata: it was not created by ragtune")
        why = built.mismatch(meta)
        if why:
            raise IndexMismatchError(f"refusing to write into {collection}: {why}. Build a new generation "
                                     "(ragtune ingest --rebuild) and promote it instead.")

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

    # --- writes -----------------------------------------------------------------------------------
    def upsert_chunks(self, collection: str, chunks: Sequence[Chunk], vectors: Any) -> int:
        """Write chunks (with their vectors) and drop the same documents' chunks beyond the new count."""
        collection = self._use(collection)
        vecs = vectors.tolist() if hasattr(vectors, "tolist") else [list(v) for v in vectors]
        rows = [{"id": c.id, "doc_id": c.doc_id, "vector": v, "text": _clip(c.text), **_meta_row(c)}
                for c, v in zip(chunks, vecs, strict=True)]
        if self._lexical(collection):
            for row in rows:
                row["lexical"] = _clip(analyze(row["text"]))
        for start in range(0, len(rows), 500):
            self._c.upsert(collection, rows[start:start + 500])
        counts: dict[str, int] = {}
        for c in chunks:
            counts[c.doc_id] = max(counts.get(c.doc_id, 0), c.chunk_index + 1)
        for doc_id, n in counts.items():
            self._c.delete(collection, filter=f'doc_id == "{doc_id}" and chunk_index >= {n}')
        return len(rows)

    def delete_documents(self, collection: str, doc_ids: Iterable[str]) -> None:
        collection = self._use(collection)
        ids = list(doc_ids)
        for start in range(0, len(ids), 200):
            self._c.delete(collection, filter=f"doc_id in {_list(ids[start:start + 200])}")

    def flush(self, collection: str) -> None:
        """Flush after writes: Milvus Lite searches unflushed rows by brute force (600 ms vs 8 ms at 20k)."""
        self._c.flush(collection)

    def insert_rows(self, collection: str, rows: Sequence[dict[str, Any]]) -> int:
        """Bulk insert rows as ``iter_rows`` yields them (snapshot restore); ``lexical``/``sparse`` are recomputed."""
        collection = self._use(collection)
        lexical = self._lexical(collection)
        for start in range(0, len(rows), 1000):
            batch = [{k: v for k, v in r.items() if k not in ("sparse", "lexical")} for r in rows[start:start + 1000]]
            if lexical:
                for row in batch:
                    row["lexical"] = _clip(analyze(row["text"]))
            self._c.upsert(collection, batch)
        return len(rows)

    def bulk_import(self, collection: str, files: Sequence[str], timeout_s: float = 600.0) -> int:
        """Milvus' bulk import of Parquet files the *server* reads from its own storage (a standalone's
        local disk, a cluster's bucket), one task per file as Milvus 2.3 requires, all submitted before
        waiting (each waits ~2 s for the server to mark it completed); returns the rows imported.

        The collection is released during the import and loaded after it: Milvus 2.3 does not show
        imported segments to a collection that was loaded before (count(*) stays 0 until a reload).
        pymilvus' only bulk-insert verbs for Milvus < 2.4 are the ORM's (deprecated, gone in pymilvus 3.1),
        so this calls the client's own gRPC handler, which those verbs wrap.
        """
        physical = self._use(collection)
        handler = self._c._get_connection()
        self._c.release_collection(physical)
        self._loaded.discard(physical)
        tasks = {file: handler.do_bulk_insert(physical, "", [file]) for file in files}  # queued together
        rows = sum(_wait_for_import(handler, task, file, timeout_s) for file, task in tasks.items())
        self._use(physical)
        return rows

    # --- reads ------------------------------------------------------------------------------------
    def count(self, collection: str, doc_id: str | None = None) -> int:
        collection = self._use(collection)
        flt = f'doc_id == "{doc_id}"' if doc_id else ""
        return int(self._c.query(collection, filter=flt, output_fields=["count(*)"])[0]["count(*)"])

    def iter_rows(self, collection: str, batch_size: int = 1000, fields: Sequence[str] | None = None,
                  filter: str = "") -> Iterator[list[dict[str, Any]]]:
        """All rows (id, doc_id, vector, text, metadata) in batches: snapshot export, verification."""
        collection = self._use(collection)
        out = list(fields) if fields else ["vector", *_FIELDS]
        it = self._c.query_iterator(collection, batch_size=batch_size, filter=filter, output_fields=out)
        try:
            while batch := it.next():
                yield [dict(r) for r in batch]
        finally:
            it.close()

    def index_progress(self, collection: str) -> tuple[int, bool]:
        """Rows the vector index covers and whether its build has finished (a server builds in the background)."""
        physical = self.resolve(collection)
        if physical is None:
            raise MilvusIndexError(f"no collection or alias {collection!r} at {self.uri}")
        info = self._c.describe_index(physical, "vector")
        return int(info.get("indexed_rows", 0)), info.get("state", "Finished") == "Finished"

    def chunk_ids(self, collection: str, doc_ids: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {d: [] for d in doc_ids}
        for start in range(0, len(doc_ids), 200):
            flt = f"doc_id in {_list(list(doc_ids[start:start + 200]))}"
            for batch in self.iter_rows(collection, fields=["id", "doc_id"], filter=flt):
                for r in batch:
                    found[r["doc_id"]].append(r["id"])
        return found

    def vectors_by_text(self, collection: str, doc_ids: Sequence[str]) -> dict[str, list[float]]:
        """Indexed text -> vector for these documents, so unchanged chunk texts are not re-embedded."""
        found: dict[str, list[float]] = {}
        for start in range(0, len(doc_ids), 200):
            flt = f"doc_id in {_list(list(doc_ids[start:start + 200]))}"
            for batch in self.iter_rows(collection, fields=["text", "vector"], filter=flt):
                found.update((r["text"], r["vector"]) for r in batch)
        return found

    # --- searches ---------------------------------------------------------------------------------
    def search_dense(self, collection: str, vector: Sequence[float], k: int = 5, filter: str = "") -> list[Hit]:
        return self.search_dense_many(collection, [vector], k, filter)[0]

    def search_dense_many(self, collection: str, vectors: Any, k: int = 5, filter: str = "") -> list[list[Hit]]:
        collection = self._use(collection)
        vecs = vectors.tolist() if hasattr(vectors, "tolist") else [list(v) for v in vectors]
        res = self._c.search(collection, vecs, anns_field="vector", limit=k, filter=filter,
                             output_fields=list(_FIELDS), search_params={"metric_type": "COSINE"},
                             consistency_level=SEARCH_CONSISTENCY)
        return [[_hit(h) for h in hits] for hits in res]

    def search_bm25(self, collection: str, text: str, k: int = 5, filter: str = "") -> list[Hit]:
        collection = self._use(collection)
        self._require_bm25(collection)
        query = self._bm25_query(collection, text)
        res = self._c.search(collection, [query], anns_field="sparse", limit=k, filter=filter,
                             output_fields=list(_FIELDS), search_params={"metric_type": "BM25"},
                             consistency_level=SEARCH_CONSISTENCY)
        # Milvus Lite reports BM25 as a negated distance; flip it so higher is better everywhere.
        return [_hit(h, abs) for h in res[0]]

    def search_hybrid(self, collection: str, text: str, vector: Sequence[float], k: int = 5,
                      candidates: int = 50, rrf_k: int = 60, filter: str = "") -> list[Hit]:
        """Dense + BM25 fused with reciprocal-rank fusion; dense only, with a warning, without BM25."""
        collection = self._use(collection)
        if not self.hybrid_capable(collection):
            return self.search_dense(collection, vector, k, filter)
        dense = AnnSearchRequest([list(vector)], "vector", {"metric_type": "COSINE"}, candidates, expr=filter or None)
        query = self._bm25_query(collection, text)
        sparse = AnnSearchRequest([query], "sparse", {"metric_type": "BM25"}, candidates, expr=filter or None)
        res = self._c.hybrid_search(collection, [dense, sparse], RRFRanker(rrf_k), limit=k,
                                    output_fields=list(_FIELDS), consistency_level=SEARCH_CONSISTENCY)
        return [_hit(h) for h in res[0]]

    # --- the record -------------------------------------------------------------------------------
    def read_records(self, collection: str, source: str | None = None) -> dict[str, DocRecord]:
        name = record_name(self._use(collection))
        flt = f"source == {_quote(source)}" if source is not None else ""
        it = self._c.query_iterator(name, batch_size=2000, filter=flt, output_fields=list(_RECORD_FIELDS))
        out: dict[str, DocRecord] = {}
        try:
            while batch := it.next():
                out.update((r["doc_id"], DocRecord(**{k: r[k] for k in _RECORD_FIELDS})) for r in batch)
        finally:
            it.close()
        return out

    def get_records(self, collection: str, doc_ids: Sequence[str]) -> dict[str, DocRecord]:
        if not doc_ids:
            return {}
        name = record_name(self._use(collection))
        rows = self._c.query(name, filter=f"doc_id in {_list(list(doc_ids))}", output_fields=list(_RECORD_FIELDS))
        return {r["doc_id"]: DocRecord(**{k: r[k] for k in _RECORD_FIELDS}) for r in rows}

    def write_records(self, collection: str, records: Sequence[DocRecord]) -> None:
        name = record_name(self._use(collection))
        now = time.time()
        rows = [{**{k: getattr(r, k) for k in _RECORD_FIELDS}, "updated_at": r.updated_at or now,
                 "reason": r.reason[:4000], "unused": [0.0, 0.0]} for r in records]
        for start in range(0, len(rows), 1000):
            self._c.upsert(name, rows[start:start + 1000])

    def delete_records(self, collection: str, doc_ids: Sequence[str]) -> None:
        name = record_name(self._use(collection))
        for start in range(0, len(doc_ids), 200):
            self._c.delete(name, filter=f"doc_id in {_list(list(doc_ids[start:start + 200]))}")
        self._c.flush(name)

    def flush_records(self, collection: str) -> None:
        self._c.flush(record_name(self._use(collection)))

    # --- internals --------------------------------------------------------------------------------
    def _describe(self, collection: str) -> dict[str, Any]:
        physical = self._physical(collection)
        if physical is None:
            raise MilvusIndexError(f"no collection or alias {collection!r} at {self.uri}: run `ragtune ingest` first")
        if physical not in self._schemas:
            self._schemas[physical] = self._c.describe_collection(physical)
        return self._schemas[physical]

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

    def _physical(self, name: str) -> str | None:
        """``resolve`` without the RPC for a name this client already knows as a collection."""
        return name if name in self._collections else self.resolve(name)

    def _lexical(self, collection: str) -> bool:
        return any(f["name"] == "lexical" for f in self._describe(collection)["fields"])

    def _bm25_query(self, collection: str, text: str) -> str:
        """The query as the generation's BM25 field holds text: analysed when it holds analysed terms."""
        if not self._lexical(collection):
            return text
        meta = self.index_meta(collection)
        if meta is not None and meta.analyzer != ANALYZER:
            raise MilvusIndexError(f"{collection} was built with BM25 analyzer {meta.analyzer!r}, this ragtune "
                                   f"analyses queries with {ANALYZER!r}: rebuild it (ragtune ingest --rebuild)")
        return analyze(text) or text  # stop words only: never send an empty query; the raw words match nothing

    def _require_bm25(self, collection: str) -> None:
        if not self.has_bm25(collection):
            raise Bm25UnavailableError(f"{collection} has no BM25 field (this Milvus server does not support "
                                       "the BM25 function; it needs Milvus >= 2.5 or Milvus Lite): use dense search")

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


def _wait_for_import(handler: Any, task: int, file: str, timeout_s: float) -> int:
    from pymilvus.client.types import BulkInsertState

    deadline = time.monotonic() + timeout_s
    while True:
        state = handler.get_bulk_insert_state(task)
        if state.state == BulkInsertState.ImportCompleted:
            return int(state.row_count)
        if state.state in (BulkInsertState.ImportFailed, BulkInsertState.ImportFailedAndCleaned):
            raise MilvusIndexError(f"bulk import of {file} failed: {state.failed_reason}")
        if time.monotonic() > deadline:
            raise MilvusIndexError(f"bulk import of {file} did not finish in {timeout_s:.0f} s ({state.state_name})")
        time.sleep(0.5)


def connect(settings: Settings) -> IndexClient:
    return IndexClient.from_settings(settings)


def _hit(h: dict[str, Any], score: Any = float) -> Hit:
    entity = h.get("entity", {})
    return Hit(id=str(h["id"]), score=float(score(h["distance"])), text=entity.get("text", ""),
               doc_id=entity.get("doc_id", ""), metadata={k: entity.get(k) for k in METADATA_FIELDS})


def _meta_row(c: Chunk) -> dict[str, Any]:
    row = c.metadata()
    for key in ("uri", "path", "title", "section", "element_types"):
        row[key] = _clip(str(row[key]), 2048)
    return row


def _clip(text: str, max_bytes: int = TEXT_MAX) -> str:
    """Milvus VARCHAR limits are in bytes: cut on a character boundary below the limit."""
    raw = text.encode("utf-8", "replace")
    return text if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", "ignore")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(values: Sequence[str]) -> str:
    return "[" + ",".join(_quote(v) for v in values) + "]"
