"""Search over one collection: dense (FAISS), BM25, personalized PageRank over the graph, and their fusion."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np

from expertrag.errors import EmptyKnowledgeBaseError, InputError
from expertrag.kg_build.store import RecordStore
from expertrag.retrievers.bm25 import BM25Index
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.fusion import reciprocal_rank_fusion
from expertrag.retrievers.graph_retriever import GraphRetriever
from expertrag.retrievers.hits import Hit, Retrieval
from expertrag.retrievers.vector_index import VectorIndex
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

Retriever = Literal["dense", "bm25", "hybrid", "graph", "graph+hybrid"]
RETRIEVERS: tuple[str, ...] = ("dense", "bm25", "hybrid", "graph", "graph+hybrid")
GRAPH_RETRIEVERS: tuple[str, ...] = ("graph", "graph+hybrid")
CANDIDATES = 100
"""Hits each retriever contributes before fusion."""


class CollectionSearcher:
    """The indexes of one collection, built or loaded on first use and rebuilt when stale."""

    def __init__(self, store: RecordStore, collection: str, index_path: Path, encoder: Encoder, settings: Settings) -> None:
        self.store = store
        self.collection = collection
        self.index_path = index_path
        self.encoder = encoder
        self.settings = settings
        self._lock = threading.Lock()
        self._fingerprint = ""
        self._vector_index: VectorIndex | None = None
        self._bm25: BM25Index | None = None
        self._graph_retriever: GraphRetriever | None = None

    def current_fingerprint(self) -> str:
        """Identify the collection's current chunk set; it changes whenever a chunk is added or removed."""
        return f"{self.collection}:{self.store.generation(self.collection)}"

    def refresh(self, fingerprint: str | None = None) -> VectorIndex:
        """Load the saved vector index, or rebuild and save it when it is missing or stale."""
        fingerprint = fingerprint or self.current_fingerprint()
        with self._lock:
            if self._vector_index is not None and self._fingerprint == fingerprint:
                return self._vector_index
            index = None
            if self.index_path.exists():
                loaded, saved_fingerprint = VectorIndex.load(self.index_path)
                if saved_fingerprint == fingerprint:
                    index = loaded
                else:
                    logger.info("Vector index of %r is stale; rebuilding it", self.collection)
            if index is None:
                index = self._build_vector_index(fingerprint)
            self._vector_index = index
            self._bm25 = None
            self._fingerprint = fingerprint
            return index

    def _build_vector_index(self, fingerprint: str) -> VectorIndex:
        started = time.perf_counter()
        chunk_ids, vectors = self.store.chunk_vectors(self.collection)
        if not chunk_ids:
            raise EmptyKnowledgeBaseError(
                f"Collection {self.collection!r} has no chunks: ingest a corpus into it with `expertrag ingest`"
            )
        s = self.settings
        index = VectorIndex.build(vectors, chunk_ids, s.exact_index_max_vectors, s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef_search)
        index.save(self.index_path, fingerprint)
        logger.info("Built a %s index of %d chunks for %r in %.1f s", index.kind, len(index), self.collection,
                    time.perf_counter() - started)
        return index

    def _bm25_index(self) -> BM25Index:
        self.refresh()
        with self._lock:
            if self._bm25 is None:
                chunk_ids, texts = self.store.chunk_texts(self.collection)
                self._bm25 = BM25Index.build(texts, chunk_ids)
            return self._bm25

    def dense(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Return the ``k`` nearest chunks of each query vector as (chunk id, cosine)."""
        index = self._vector_index or self.refresh()
        scores, ids = index.search(query_vectors, k)
        return [list(zip(row_ids, map(float, row_scores))) for row_ids, row_scores in zip(ids, scores)]

    def bm25(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Return the ``k`` best BM25 chunks of each query as (chunk id, score)."""
        scores, ids = self._bm25_index().search(queries, k)
        return [list(zip(row_ids, map(float, row_scores))) for row_ids, row_scores in zip(ids, scores)]

    def graph_retriever(self) -> GraphRetriever:
        """Return the collection's graph retriever, created on first use."""
        with self._lock:
            if self._graph_retriever is None:
                self._graph_retriever = GraphRetriever(
                    self.store, self.collection, self.index_path.parent, self.encoder.encode, self.settings
                )
            return self._graph_retriever

    def search(self, query: str, k: int, retriever: Retriever = "hybrid") -> list[Hit]:
        """Return the ``k`` best chunks for ``query``; ``Hit.ranks`` records each retriever's rank."""
        return self.retrieve(query, k, retriever, with_paths=False).hits

    def retrieve(self, query: str, k: int, retriever: Retriever = "hybrid", query_vector: np.ndarray | None = None,
                 with_paths: bool = True) -> Retrieval:
        """Return the ``k`` best chunks for ``query`` with the entity links, paths and notes behind them.

        ``graph`` ranks by personalized PageRank seeded with the query's linked entities and
        the dense top chunks. ``hybrid`` fuses the dense and BM25 rankings, and
        ``graph+hybrid`` fuses all three.
        """
        if retriever not in RETRIEVERS:
            raise InputError(f"Unknown retriever {retriever!r}: use one of {', '.join(RETRIEVERS)}")
        if not query.strip():
            raise InputError("The query is empty")
        fingerprint = self.current_fingerprint()
        self.refresh(fingerprint)

        rankings: dict[str, list[tuple[str, float]]] = {}
        if retriever != "bm25":
            vector = self.encoder.encode([query]) if query_vector is None else query_vector.reshape(1, -1)
            rankings["dense"] = self.dense(vector, max(k, CANDIDATES))[0]
        if retriever in ("bm25", "hybrid", "graph+hybrid"):
            rankings["bm25"] = self.bm25([query], max(k, CANDIDATES))[0]
        graph = None
        if retriever in ("graph", "graph+hybrid"):
            graph = self.graph_retriever().rank(query, rankings["dense"], fingerprint, max(k, CANDIDATES), with_paths)
            rankings["graph"] = graph.ranking

        if retriever == "graph":
            ordered = rankings["graph"][:k]
        elif len(rankings) == 1:
            (ordered,) = (ranking[:k] for ranking in rankings.values())
        else:
            ordered = reciprocal_rank_fusion([[c for c, _ in r] for r in rankings.values()], k=self.settings.rrf_k)[:k]
        hits = self._hits(ordered, rankings)
        if graph is None:
            return Retrieval(hits)
        return Retrieval(hits, graph.links, graph.paths, graph.notes)

    def _hits(self, ordered: list[tuple[str, float]], rankings: dict[str, list[tuple[str, float]]]) -> list[Hit]:
        stored = self.store.get_chunks([chunk_id for chunk_id, _ in ordered])
        rank_of = {name: {c: r for r, (c, _) in enumerate(ranking, start=1)} for name, ranking in rankings.items()}
        hits = []
        for chunk_id, score in ordered:
            chunk = stored.get(chunk_id)
            if chunk is None:
                continue
            ranks = {name: ranks[chunk_id] for name, ranks in rank_of.items() if chunk_id in ranks}
            hits.append(Hit(chunk.chunk_id, chunk.doc_id, chunk.collection, chunk.title, chunk.text,
                            chunk.start, chunk.end, score, ranks))
        return hits
