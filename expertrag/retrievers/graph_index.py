"""The entity–chunk graph of one collection, held as sparse matrices for personalized PageRank.

Nodes are the collection's chunks (indices ``0 .. n_chunks-1``) followed by the entities
they mention. Edges are undirected: chunk–entity for each mention (weight = number of
mentions of the entity in the chunk), entity–entity for each extracted relation, and
optional synonym edges between entities whose name embeddings are close. This is the
passage–phrase graph of HippoRAG, built from the record store instead of an LLM's triples.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from expertrag.kg_build.resolution import normalize_name
from expertrag.kg_build.store import RecordStore

logger = logging.getLogger(__name__)

_PARENTHETICAL = re.compile(r"\s*\([^)]*\)\s*$")


@dataclass
class RelationEdge:
    """One extracted relation between two entity nodes of the graph."""

    relation_id: str
    subject: int
    predicate: str
    object: int


@dataclass
class GraphIndex:
    """Sparse entity–chunk graph of one collection, with the lookups entity linking needs."""

    collection: str
    fingerprint: str
    chunk_ids: list[str]
    entity_ids: list[str]
    entity_names: list[str]
    entity_labels: list[str]
    entity_chunk_counts: np.ndarray
    adjacency: sp.csr_matrix
    aliases: dict[str, list[int]]
    """Normalized entity name or mention text → entity positions (0-based among entities)."""
    titles: dict[str, list[int]]
    """Normalized document title, with and without a trailing parenthetical → chunk positions."""
    relations: list[RelationEdge]
    chunk_position: dict[str, int] = field(init=False)
    entity_position: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.chunk_position = {chunk_id: i for i, chunk_id in enumerate(self.chunk_ids)}
        self.entity_position = {entity_id: i for i, entity_id in enumerate(self.entity_ids)}

    @property
    def n_chunks(self) -> int:
        """Number of chunk nodes."""
        return len(self.chunk_ids)

    @property
    def n_nodes(self) -> int:
        """Number of nodes: chunks, then entities."""
        return len(self.chunk_ids) + len(self.entity_ids)

    def entity_node(self, entity_position: int) -> int:
        """Return the graph node of an entity given its position among entities."""
        return self.n_chunks + entity_position

    def with_extra_edges(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> sp.csr_matrix:
        """Return the adjacency with extra undirected entity–entity edges (positions among entities)."""
        extra = sp.coo_matrix(
            (np.concatenate([weights, weights]),
             (np.concatenate([rows, cols]) + self.n_chunks, np.concatenate([cols, rows]) + self.n_chunks)),
            shape=self.adjacency.shape,
        )
        return sp.csr_matrix(self.adjacency + extra)


def title_keys(title: str) -> list[str]:
    """Return the lookup keys of a document title: whole, and without a trailing "(film)"-style qualifier."""
    keys = [normalize_name(title)]
    shortened = _PARENTHETICAL.sub("", title)
    if shortened != title:
        keys.append(normalize_name(shortened))
    return [key for key in dict.fromkeys(keys) if key]


def build_graph_index(store: RecordStore, collection: str, fingerprint: str) -> GraphIndex:
    """Read the collection's chunks, mentions and relations from the record store into a GraphIndex."""
    started = time.perf_counter()
    chunk_ids: list[str] = []
    doc_chunks: dict[str, list[int]] = defaultdict(list)
    for chunk_id, doc_id in store.iter_table(
        "SELECT chunk_id, doc_id FROM chunks WHERE collection = ? ORDER BY doc_id, position", (collection,)
    ):
        doc_chunks[doc_id].append(len(chunk_ids))
        chunk_ids.append(chunk_id)
    chunk_position = {chunk_id: i for i, chunk_id in enumerate(chunk_ids)}

    titles: dict[str, list[int]] = defaultdict(list)
    for doc_id, title in store.iter_table("SELECT doc_id, title FROM documents WHERE collection = ?", (collection,)):
        for key in title_keys(title or ""):
            titles[key].extend(doc_chunks.get(doc_id, []))

    entity_position: dict[str, int] = {}
    entity_ids: list[str] = []
    mention_pairs: dict[tuple[int, int], int] = defaultdict(int)
    alias_sets: dict[str, set[int]] = defaultdict(set)
    for entity_id, chunk_id, text in store.iter_table(
        "SELECT m.entity_id, m.chunk_id, m.text FROM mentions m CROSS JOIN chunks c ON c.chunk_id = m.chunk_id "
        "WHERE c.collection = ?",
        (collection,),
    ):
        position = entity_position.get(entity_id)
        if position is None:
            position = entity_position[entity_id] = len(entity_ids)
            entity_ids.append(entity_id)
        mention_pairs[(chunk_position[chunk_id], position)] += 1
        key = normalize_name(text)
        if key:
            alias_sets[key].add(position)

    entity_names = [""] * len(entity_ids)
    entity_labels = [""] * len(entity_ids)
    for entity_id, name, label in _entity_names(store, entity_ids):
        position = entity_position[entity_id]
        entity_names[position] = name
        entity_labels[position] = label
        key = normalize_name(name)
        if key:
            alias_sets[key].add(position)

    relations: list[RelationEdge] = []
    for relation_id, subject_id, predicate, object_id in store.iter_table(
        "SELECT DISTINCT r.relation_id, r.subject_id, r.predicate, r.object_id FROM relation_evidence e "
        "CROSS JOIN chunks c ON c.chunk_id = e.chunk_id JOIN relations r ON r.relation_id = e.relation_id "
        "WHERE c.collection = ?",
        (collection,),
    ):
        subject, obj = entity_position.get(subject_id), entity_position.get(object_id)
        if subject is not None and obj is not None and subject != obj:
            relations.append(RelationEdge(relation_id, subject, predicate, obj))

    n_chunks = len(chunk_ids)
    n_nodes = n_chunks + len(entity_ids)
    if mention_pairs:
        pairs = np.fromiter((p for pair in mention_pairs for p in pair), dtype=np.int64).reshape(-1, 2)
        counts = np.fromiter(mention_pairs.values(), dtype=np.float64)
    else:
        pairs, counts = np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    chunk_nodes, entity_nodes = pairs[:, 0], pairs[:, 1] + n_chunks
    subjects = np.array([r.subject for r in relations], dtype=np.int64) + n_chunks
    objects = np.array([r.object for r in relations], dtype=np.int64) + n_chunks
    rows = np.concatenate([chunk_nodes, entity_nodes, subjects, objects])
    cols = np.concatenate([entity_nodes, chunk_nodes, objects, subjects])
    weights = np.concatenate([counts, counts, np.ones(len(relations) * 2)])
    # Duplicate (i, j) pairs are summed by the COO → CSR conversion, so a pair joined by
    # two relations gets weight 2.
    adjacency = sp.csr_matrix(sp.coo_matrix((weights, (rows, cols)), shape=(n_nodes, n_nodes)))

    entity_chunk_counts = np.bincount(pairs[:, 1], minlength=len(entity_ids)) if len(pairs) else np.zeros(0, int)
    index = GraphIndex(
        collection=collection,
        fingerprint=fingerprint,
        chunk_ids=chunk_ids,
        entity_ids=entity_ids,
        entity_names=entity_names,
        entity_labels=entity_labels,
        entity_chunk_counts=entity_chunk_counts,
        adjacency=adjacency,
        aliases={key: sorted(positions) for key, positions in alias_sets.items()},
        titles=dict(titles),
        relations=relations,
    )
    logger.info(
        "Built the graph of collection %r: %d chunks, %d entities, %d relations, %d edges in %.1f s",
        collection, n_chunks, len(entity_ids), len(relations), adjacency.nnz // 2, time.perf_counter() - started,
    )
    return index


def _entity_names(store: RecordStore, entity_ids: list[str], batch: int = 900) -> list[tuple[str, str, str]]:
    names: list[tuple[str, str, str]] = []
    for offset in range(0, len(entity_ids), batch):
        part = entity_ids[offset:offset + batch]
        names.extend(store.iter_table(
            f"SELECT entity_id, name, label FROM entities WHERE entity_id IN ({','.join('?' * len(part))})", part
        ))
    return names
