"""Hierarchical communities of the entity graph (GraphRAG style), found with Leiden.

The entity graph joins two entities by a weighted edge when a relation links them
(``community_relation_weight`` per supporting chunk) and when a chunk mentions both. A
co-mention adds 1/(n-1) per chunk with n entities, so a long list of names does not
outweigh a stated relation. Leiden with the modularity objective splits the graph into level-0
communities. A community larger than ``community_split_size`` is split again by Leiden
on its own subgraph, one level down, up to ``community_max_levels`` levels.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import igraph
import numpy as np

from expertrag.kg_build.community_store import Community, CommunityStore, community_id_for
from expertrag.kg_build.store import RecordStore
from expertrag.rag.llm import LLMBackend
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

# Chunks with more distinct entities than this link only their first ones by co-mention,
# which bounds the pairs per chunk at about 1,200.
MAX_ENTITIES_PER_CHUNK = 50
# Entities and chunks recorded per community for its summary and citations.
TOP_ENTITIES = 15
TOP_CHUNKS = 3


@dataclass
class EntityGraph:
    """The weighted, undirected entity graph with the chunks that mention each entity."""

    entity_ids: list[str]
    edges: list[tuple[int, int]]
    weights: list[float]
    chunks_of_entity: dict[str, list[str]] = field(default_factory=dict)

    def to_igraph(self) -> igraph.Graph:
        """Return the graph as python-igraph with a ``weight`` edge attribute."""
        graph = igraph.Graph(n=len(self.entity_ids), edges=self.edges, directed=False)
        graph.es["weight"] = self.weights
        graph.vs["entity_id"] = self.entity_ids
        return graph


@dataclass
class CommunityBuildReport:
    """The outcome of one ``build_communities`` run."""

    entities: int = 0
    edges: int = 0
    communities: int = 0
    per_level: dict[int, int] = field(default_factory=dict)
    summaries_kept: int = 0
    summaries_written: int = 0
    summaries_failed: list[str] = field(default_factory=list)
    summaries_pending: int = 0
    removed: int = 0
    detect_seconds: float = 0.0
    summary_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def load_entity_graph(store: RecordStore, relation_weight: float = 1.0) -> EntityGraph:
    """Build the entity graph from the stored mentions and relations of every collection.

    Entities without any edge are left out, because no community can contain them.
    """
    pair_weights: dict[tuple[str, str], float] = defaultdict(float)
    chunks_of_entity: dict[str, list[str]] = defaultdict(list)

    current_chunk: str | None = None
    entities_in_chunk: list[str] = []

    def add_co_mentions() -> None:
        distinct = list(dict.fromkeys(entities_in_chunk))[:MAX_ENTITIES_PER_CHUNK]
        for entity_id in distinct:
            chunks_of_entity[entity_id].append(current_chunk)  # type: ignore[arg-type]
        if len(distinct) < 2:
            return
        weight = 1.0 / (len(distinct) - 1)
        ordered = sorted(distinct)
        for i, first in enumerate(ordered):
            for second in ordered[i + 1:]:
                pair_weights[(first, second)] += weight

    for chunk_id, entity_id in store.iter_table("SELECT chunk_id, entity_id FROM mentions ORDER BY chunk_id, start"):
        if chunk_id != current_chunk:
            if current_chunk is not None:
                add_co_mentions()
            current_chunk, entities_in_chunk = chunk_id, []
        entities_in_chunk.append(entity_id)
    if current_chunk is not None:
        add_co_mentions()

    if relation_weight > 0:
        for subject_id, object_id, evidence in store.iter_table(
            "SELECT r.subject_id, r.object_id, COUNT(e.chunk_id) FROM relations r "
            "JOIN relation_evidence e ON e.relation_id = r.relation_id GROUP BY r.relation_id"
        ):
            if subject_id != object_id:
                pair = (subject_id, object_id) if subject_id < object_id else (object_id, subject_id)
                pair_weights[pair] += relation_weight * evidence

    entity_ids = sorted({entity_id for pair in pair_weights for entity_id in pair})
    index = {entity_id: i for i, entity_id in enumerate(entity_ids)}
    edges = [(index[a], index[b]) for a, b in pair_weights]
    return EntityGraph(entity_ids, edges, list(pair_weights.values()), dict(chunks_of_entity))


def detect_communities(graph: EntityGraph, settings: Settings) -> list[Community]:
    """Split ``graph`` into hierarchical communities with Leiden, coarsest level first.

    Runs are seeded with ``community_seed``, so the same graph gives the same communities.
    A community is split one level down only when Leiden finds at least two parts in it,
    and parts smaller than ``community_min_size`` are dropped at every level.
    """
    full = graph.to_igraph()
    communities: list[Community] = []
    # (vertex indices in the full graph, parent id, level)
    frontier: list[tuple[list[int], str | None, int]] = [(list(range(full.vcount())), None, 0)]

    while frontier:
        vertices, parent_id, level = frontier.pop(0)
        subgraph = full if parent_id is None else full.induced_subgraph(vertices)
        parts = _leiden(subgraph, settings.community_resolution, settings.community_seed)
        if parent_id is not None and len(parts) < 2:
            continue
        for part in parts:
            if len(part) < settings.community_min_size:
                continue
            members = [vertices[i] for i in part]
            member_ids = [graph.entity_ids[i] for i in members]
            community = Community(
                community_id=community_id_for(level, member_ids),
                level=level,
                parent_id=parent_id,
                member_ids=sorted(member_ids),
                top_entities=_top_entities(subgraph, part),
                chunk_ids=_top_chunks(member_ids, graph.chunks_of_entity),
            )
            communities.append(community)
            if len(members) > settings.community_split_size and level + 1 < settings.community_max_levels:
                frontier.append((members, community.community_id, level + 1))
    return communities


def _leiden(graph: igraph.Graph, resolution: float, seed: int) -> list[list[int]]:
    """Return Leiden's parts of ``graph`` (vertex indices), largest first."""
    if graph.vcount() == 0:
        return []
    # igraph draws from a Python random generator, so a private seeded one keeps runs
    # reproducible without touching the global ``random`` state.
    igraph.set_random_number_generator(random.Random(seed))
    try:
        clustering = graph.community_leiden(
            objective_function="modularity", weights="weight", resolution=resolution, n_iterations=-1
        )
    finally:
        igraph.set_random_number_generator(random)
    parts = [list(part) for part in clustering]
    parts.sort(key=lambda part: (-len(part), part[0] if part else 0))
    return parts


def _top_entities(graph: igraph.Graph, part: list[int]) -> list[str]:
    """Return the entity ids of ``part`` ordered by weighted degree inside the part."""
    inside = graph.induced_subgraph(part)
    strength = inside.strength(weights="weight")
    order = sorted(range(len(part)), key=lambda i: (-strength[i], inside.vs[i]["entity_id"]))
    return [inside.vs[i]["entity_id"] for i in order[:TOP_ENTITIES]]


def _top_chunks(member_ids: list[str], chunks_of_entity: dict[str, list[str]]) -> list[str]:
    """Return the chunks that mention most members, ties broken by chunk id."""
    counts: dict[str, int] = defaultdict(int)
    for entity_id in member_ids:
        for chunk_id in set(chunks_of_entity.get(entity_id, ())):
            counts[chunk_id] += 1
    return sorted(counts, key=lambda chunk_id: (-counts[chunk_id], chunk_id))[:TOP_CHUNKS]


def build_communities(
    store: RecordStore,
    settings: Settings,
    backend: LLMBackend | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    max_summaries: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CommunityBuildReport:
    """Detect communities, store them, and write the LLM summaries that are missing.

    Summaries of communities whose membership did not change are kept, so a second run
    only summarizes what is new, and ``max_summaries`` spreads the LLM work over several
    runs. Without ``backend`` only the membership is stored. ``encode`` embeds each
    summary for the global search's selection step. A failed summary is logged with the
    community id and skipped.
    """
    from expertrag.rag.community_summaries import CommunitySummarizer

    report = CommunityBuildReport()
    started = time.perf_counter()
    graph = load_entity_graph(store, settings.community_relation_weight)
    communities = detect_communities(graph, settings)
    report.entities, report.edges, report.communities = len(graph.entity_ids), len(graph.edges), len(communities)
    for community in communities:
        report.per_level[community.level] = report.per_level.get(community.level, 0) + 1

    community_store = CommunityStore(store)
    report.summaries_kept, report.removed = community_store.replace_all(communities)
    report.detect_seconds = time.perf_counter() - started
    logger.info(
        "found %d communities (%s per level) among %d entities and %d edges in %.1f s; %d summaries kept",
        len(communities), report.per_level, report.entities, report.edges, report.detect_seconds, report.summaries_kept,
    )

    missing = [community for community in communities if not community.has_summary]
    if backend is None:
        report.summaries_pending = len(missing)
        report.notes.append("no LLM backend given, so no summary was written")
        return report

    started = time.perf_counter()
    summarizer = CommunitySummarizer(store, backend)
    written, failed, pending = summarizer.summarize_all(community_store, missing, encode, max_summaries, progress)
    report.summaries_written, report.summaries_failed, report.summaries_pending = written, failed, pending
    report.notes.extend(summarizer.notes)
    report.summary_seconds = time.perf_counter() - started
    return report
