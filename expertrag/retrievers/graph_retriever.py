"""Graph retrieval: personalized PageRank over the entity–chunk graph, seeded by the query.

The walk starts from two kinds of seeds, as in HippoRAG 2:

* the entities and document titles the query names (entity linking), each entity
  weighted by its specificity, 1 / (number of chunks that mention it), so a rare name
  pulls harder than a common one;
* the top dense-retrieval chunks, weighted by their min-max normalized scores, with
  ``graph_passage_weight`` times the total mass of the linked seeds.

Chunks then rank by their PageRank score. A query with no linkable entity or title falls
back to the dense ranking and records that in its notes.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.kg_build.store import RecordStore
from expertrag.retrievers.entity_linking import EntityLinker, Link
from expertrag.retrievers.graph_index import GraphIndex, build_graph_index
from expertrag.retrievers.paths import PathFinder, RelationPath
from expertrag.retrievers.ppr import personalized_pagerank, transition_matrix
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

PATH_ENDPOINT_MIN_CHUNKS = 3
PATH_ENDPOINT_CHUNK_FRACTION = 0.002
"""A concept (not a named entity) is a path endpoint when at most max(3, 0.2 % of the chunks) mention it."""
NO_LINK_NOTE = "no entity or title in the query matched the graph, so graph retrieval fell back to dense retrieval"


@dataclass
class GraphRanking:
    """The chunks graph retrieval ranks for a query, with the links and paths behind them."""

    ranking: list[tuple[str, float]]
    links: list[Link] = field(default_factory=list)
    paths: list[RelationPath] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class GraphRetriever:
    """Personalized PageRank retrieval over one collection; the graph is rebuilt when the collection changes."""

    def __init__(self, store: RecordStore, collection: str, cache_dir: Path,
                 encode: Callable[[list[str]], np.ndarray], settings: Settings) -> None:
        self.store = store
        self.collection = collection
        self.cache_dir = cache_dir
        self.encode = encode
        self.settings = settings
        self._lock = threading.Lock()
        self._graph: GraphIndex | None = None
        self._transition = None
        self._dangling: np.ndarray | None = None
        self._linker: EntityLinker | None = None
        self._paths: PathFinder | None = None
        self._name_vectors: np.ndarray | None = None
        self._nlp: Any = None

    def graph(self, fingerprint: str) -> GraphIndex:
        """Return the collection's graph, building it when the fingerprint moved."""
        with self._lock:
            if self._graph is None or self._graph.fingerprint != fingerprint:
                graph = build_graph_index(self.store, self.collection, fingerprint)
                self._name_vectors = None
                adjacency = graph.adjacency
                if self.settings.graph_synonym_edges and graph.entity_ids:
                    adjacency = graph.with_extra_edges(*self._synonym_edges(graph))
                self._transition, self._dangling = transition_matrix(adjacency)
                self._graph = graph
                self._linker = EntityLinker(
                    graph,
                    encode=self.encode if self.settings.entity_link_by_embedding else None,
                    name_vectors=self.name_vectors if self.settings.entity_link_by_embedding else None,
                    phrases=self.query_phrases if self.settings.entity_link_by_embedding else None,
                    threshold=self.settings.entity_link_threshold,
                    max_chunk_fraction=self.settings.entity_max_chunk_fraction,
                )
                self._paths = PathFinder(graph)
            return self._graph

    def name_vectors(self, graph: GraphIndex | None = None) -> np.ndarray:
        """Return normalized embeddings of the entity names of ``graph`` (default: the current graph),
        cached on disk per fingerprint."""
        graph = graph or self._graph
        assert graph is not None
        if self._name_vectors is not None:
            return self._name_vectors
        path = self.cache_dir / f"{self.collection}.entity_names.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["fingerprint"]) == graph.fingerprint and saved["vectors"].shape[0] == len(graph.entity_ids):
                    self._name_vectors = saved["vectors"]
                    return self._name_vectors
        logger.info("Encoding %d entity names of collection %r", len(graph.entity_names), self.collection)
        vectors = self.encode(graph.entity_names).astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, vectors=vectors, fingerprint=np.array(graph.fingerprint))
        atomic_write_bytes(path, buffer.getvalue())
        self._name_vectors = vectors
        return vectors

    def _synonym_edges(self, graph: GraphIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (rows, cols, weights) joining entities whose name cosine reaches ``graph_synonym_threshold``."""
        import faiss

        vectors = np.ascontiguousarray(self.name_vectors(graph), dtype=np.float32)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        scores, neighbours = index.search(vectors, 6)
        rows = np.repeat(np.arange(len(vectors)), neighbours.shape[1])
        cols, weights = neighbours.ravel(), scores.ravel()
        keep = (cols > rows) & (weights >= self.settings.graph_synonym_threshold)
        logger.info("Added %d synonym edges at cosine >= %.2f", int(keep.sum()), self.settings.graph_synonym_threshold)
        return rows[keep], cols[keep], weights[keep].astype(np.float64)

    @staticmethod
    def _path_endpoint(graph: GraphIndex, link: Link) -> bool:
        """Return True for a named entity, or a concept mentioned in few chunks.

        Between generic concepts such as "year" and "university" a short path always exists
        and explains nothing, so paths join only these endpoints.
        """
        label = graph.entity_labels[graph.entity_position[link.entity_id]] if link.entity_id else ""
        max_chunks = max(PATH_ENDPOINT_MIN_CHUNKS, PATH_ENDPOINT_CHUNK_FRACTION * graph.n_chunks)
        return label != "CONCEPT" or link.chunk_count <= max_chunks

    def query_phrases(self, query: str) -> list[tuple[int, int]]:
        """Return the character spans of the query's named entities and noun chunks (spaCy)."""
        with self._lock:
            if self._nlp is None:
                from expertrag.kg_build.extraction import load_spacy

                self._nlp = load_spacy(self.settings.spacy_model)
        doc = self._nlp(query)
        spans = [(ent.start_char, ent.end_char) for ent in doc.ents]
        spans += [(chunk.start_char, chunk.end_char) for chunk in doc.noun_chunks]
        return list(dict.fromkeys(spans))

    def rank(self, query: str, dense: list[tuple[str, float]], fingerprint: str,
             limit: int = 100, with_paths: bool = True) -> GraphRanking:
        """Rank the collection's chunks for ``query``; ``dense`` is the dense ranking (chunk id, cosine)."""
        graph = self.graph(fingerprint)
        assert self._linker is not None
        assert self._paths is not None
        assert self._transition is not None
        links = self._linker.link(query)
        seeds = np.zeros(graph.n_nodes)
        for link in links:
            if link.entity_id is not None:
                seeds[graph.entity_node(graph.entity_position[link.entity_id])] += link.score / max(1, link.chunk_count)
            else:
                for chunk_id in link.chunk_ids:
                    seeds[graph.chunk_position[chunk_id]] += link.score / max(1, len(link.chunk_ids))
        if not seeds.any():
            return GraphRanking(dense[:limit], links, [], [NO_LINK_NOTE])

        linked_mass = seeds.sum()
        top = [(graph.chunk_position[c], s) for c, s in dense[: self.settings.graph_dense_seeds] if c in graph.chunk_position]
        if top and self.settings.graph_passage_weight > 0:
            positions = np.array([p for p, _ in top])
            scores = np.array([s for _, s in top], dtype=np.float64)
            spread = scores.max() - scores.min()
            weights = (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)
            if weights.sum() > 0:
                seeds[positions] += self.settings.graph_passage_weight * linked_mass * weights / weights.sum()

        scores = personalized_pagerank(self._transition, self._dangling, seeds, damping=self.settings.ppr_damping)
        chunk_scores = scores[: graph.n_chunks]
        order = np.argsort(-chunk_scores, kind="stable")[:limit]
        ranking = [(graph.chunk_ids[i], float(chunk_scores[i])) for i in order if chunk_scores[i] > 0]
        paths = []
        if with_paths:
            entity_ids = [link.entity_id for link in links if link.entity_id is not None and self._path_endpoint(graph, link)]
            paths = self._paths.paths_between(self.store, entity_ids, max_hops=self.settings.graph_path_hops)
        return GraphRanking(ranking, links, paths, [])
