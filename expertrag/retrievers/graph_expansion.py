"""A first graph expansion: from the entities of the top chunks to the chunks of their neighbours.

Seed entities are those mentioned in the top-ranked chunks, minus entities so common
that they link everything (more than ``max_entity_chunks`` chunks). Their neighbours
through extracted relations lead to further chunks, scored by how many seed-to-neighbour
links reach them, each weighted by the neighbour's inverse chunk frequency.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from expertrag.kg_build.store import Fact, RecordStore


def expand(
    store: RecordStore,
    collection: str,
    seed_chunk_ids: Sequence[str],
    max_seed_entities: int = 10,
    max_entity_chunks: int = 50,
    limit: int = 50,
) -> tuple[list[str], list[Fact]]:
    """Return (chunk ids reached through the graph, best first; facts that link them)."""
    mentioned = store.entities_of_chunks(seed_chunk_ids)
    seeds: list[str] = []
    for chunk_id in seed_chunk_ids:
        for entity_id in mentioned.get(chunk_id, []):
            if entity_id not in seeds:
                seeds.append(entity_id)
    frequency = store.entity_chunk_counts(seeds, collection)
    seeds = [e for e in seeds if 0 < frequency.get(e, 0) <= max_entity_chunks][:max_seed_entities]
    if not seeds:
        return [], []

    facts = store.facts_about(seeds, limit=200)
    seed_set = set(seeds)
    neighbours = {f.object_id if f.subject_id in seed_set else f.subject_id for f in facts}
    neighbours -= seed_set
    neighbour_frequency = store.entity_chunk_counts(sorted(neighbours), collection)
    neighbours = {e for e in neighbours if 0 < neighbour_frequency.get(e, 0) <= max_entity_chunks}
    chunks_of = store.chunks_of_entities(sorted(neighbours), collection)

    total = max(1, store.counts(collection)["chunks"])
    scores: dict[str, float] = defaultdict(float)
    seen = set(seed_chunk_ids)
    for entity_id, chunk_ids in chunks_of.items():
        weight = math.log(1 + total / len(chunk_ids))
        for chunk_id in chunk_ids:
            if chunk_id not in seen:
                scores[chunk_id] += weight
    ranked = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))[:limit]
    linking = [f for f in facts if (f.object_id in neighbours) or (f.subject_id in neighbours)]
    return ranked, linking
