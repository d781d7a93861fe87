"""Reads: dense, BM25 and hybrid search, and the row queries behind snapshots and re-ingestion.

BM25: Milvus Lite 3.2 and Milvus >= 2.5 compute a sparse BM25 field server-side; Milvus 2.3/2.4
cannot, so such a generation is dense only and bm25 search says so clearly. The BM25 input is the
``lexical`` field: the chunk text analysed by ``tasks.stores.analyzer`` (stemmed, stop words out), and
queries are analysed the same way. Generations built before it index ``text`` as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pymilvus import AnnSearchRequest, RRFRanker

from tasks.stores.analyzer import ANALYZER, analyze
from tasks.stores.milvus.connection import Connection
from tasks.stores.milvus.errors import Bm25UnavailableError, MilvusIndexError
from tasks.stores.milvus.fields import CHUNK_FIELDS, in_list
from tasks.types import METADATA_FIELDS, Hit

# Searches read with Session consistency: the writing process sees its own writes, every other reader
# reads what the server has without waiting for its next time tick -- Strong made each search on a
# Milvus 2.3 server wait for one (docs/retrieval.md, bench/query.py). Flushed data is visible to every reader.
SEARCH_CONSISTENCY = "Session"


class Reads(Connection):
    """Searches and row queries; every search returns ``Hit``s, higher score better."""

    # --- searches ---------------------------------------------------------------------------------
    def search_dense(self, collection: str, vector: Sequence[float], k: int = 5, filter: str = "") -> list[Hit]:
        return self.search_dense_many(collection, [vector], k, filter)[0]

    def search_dense_many(self, collection: str, vectors: Any, k: int = 5, filter: str = "") -> list[list[Hit]]:
        collection = self._use(collection)
        vecs = vectors.tolist() if hasattr(vectors, "tolist") else [list(v) for v in vectors]
        res = self._c.search(collection, vecs, anns_field="vector", limit=k, filter=filter,
                             output_fields=list(CHUNK_FIELDS), search_params={"metric_type": "COSINE"},
                             consistency_level=SEARCH_CONSISTENCY)
        return [[_hit(h) for h in hits] for hits in res]

    def search_bm25(self, collection: str, text: str, k: int = 5, filter: str = "") -> list[Hit]:
        collection = self._use(collection)
        self._require_bm25(collection)
        query = self._bm25_query(collection, text)
        res = self._c.search(collection, [query], anns_field="sparse", limit=k, filter=filter,
                             output_fields=list(CHUNK_FIELDS), search_params={"metric_type": "BM25"},
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
                                    output_fields=list(CHUNK_FIELDS), consistency_level=SEARCH_CONSISTENCY)
        return [_hit(h) for h in res[0]]

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

    # --- row queries ------------------------------------------------------------------------------
    def count(self, collection: str, doc_id: str | None = None) -> int:
        collection = self._use(collection)
        flt = f'doc_id == "{doc_id}"' if doc_id else ""
        return int(self._c.query(collection, filter=flt, output_fields=["count(*)"])[0]["count(*)"])

    def iter_rows(self, collection: str, batch_size: int = 1000, fields: Sequence[str] | None = None,
                  filter: str = "") -> Iterator[list[dict[str, Any]]]:
        """All rows (id, doc_id, vector, text, metadata) in batches: snapshot export, verification."""
        collection = self._use(collection)
        out = list(fields) if fields else ["vector", *CHUNK_FIELDS]
        it = self._c.query_iterator(collection, batch_size=batch_size, filter=filter, output_fields=out)
        try:
            while batch := it.next():
                yield [dict(r) for r in batch]
        finally:
            it.close()

    def chunk_ids(self, collection: str, doc_ids: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {d: [] for d in doc_ids}
        for start in range(0, len(doc_ids), 200):
            flt = f"doc_id in {in_list(list(doc_ids[start:start + 200]))}"
            for batch in self.iter_rows(collection, fields=["id", "doc_id"], filter=flt):
                for r in batch:
                    found[r["doc_id"]].append(r["id"])
        return found

    def vectors_by_text(self, collection: str, doc_ids: Sequence[str]) -> dict[str, list[float]]:
        """Indexed text -> vector for these documents, so unchanged chunk texts are not re-embedded."""
        found: dict[str, list[float]] = {}
        for start in range(0, len(doc_ids), 200):
            flt = f"doc_id in {in_list(list(doc_ids[start:start + 200]))}"
            for batch in self.iter_rows(collection, fields=["text", "vector"], filter=flt):
                found.update((r["text"], r["vector"]) for r in batch)
        return found


def _hit(h: dict[str, Any], score: Any = float) -> Hit:
    entity = h.get("entity", {})
    return Hit(id=str(h["id"]), score=float(score(h["distance"])), text=entity.get("text", ""),
               doc_id=entity.get("doc_id", ""), metadata={k: entity.get(k) for k in METADATA_FIELDS})
