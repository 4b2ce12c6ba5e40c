"""Shortest relation paths between entities, each step backed by the chunk and span that state it."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

from expertrag.kg_build.store import Fact, RecordStore
from expertrag.retrievers.graph_index import GraphIndex


@dataclass
class RelationPath:
    """A chain of relations from ``source`` to ``target`` entity.

    Each step is a Fact written in its stored direction (subject, predicate, object), with
    the chunk and span of the relation's first evidence.
    """

    source_id: str
    target_id: str
    steps: list[Fact] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the path as a JSON-ready dict."""
        return asdict(self)

    def describe(self) -> str:
        """Return the path as "A -predicate-> B <-predicate- C" text."""
        if not self.steps:
            return ""
        names = {self.steps[0].subject_id: self.steps[0].subject, self.steps[0].object_id: self.steps[0].object}
        current = self.source_id
        parts = [names.get(current, current)]
        for step in self.steps:
            if step.subject_id == current:
                parts.append(f"-{step.predicate}-> {step.object}")
                current = step.object_id
            else:
                parts.append(f"<-{step.predicate}- {step.subject}")
                current = step.subject_id
        return " ".join(parts)


class PathFinder:
    """Breadth-first search over a collection's relation edges, followed in either direction."""

    def __init__(self, graph: GraphIndex) -> None:
        self.graph = graph
        self._neighbours: dict[int, list[tuple[int, int]]] = {}
        for index, relation in enumerate(graph.relations):
            self._neighbours.setdefault(relation.subject, []).append((relation.object, index))
            self._neighbours.setdefault(relation.object, []).append((relation.subject, index))

    def shortest_path(self, source: int, target: int, max_hops: int = 3) -> list[int] | None:
        """Return the relation indices of one shortest path between two entity positions, or None.

        Ties between equally short paths go to the neighbour reached first, which follows
        relation storage order, so the result is deterministic for a given graph.
        """
        if source == target:
            return []
        previous: dict[int, tuple[int, int]] = {source: (-1, -1)}
        frontier = deque([(source, 0)])
        while frontier:
            node, depth = frontier.popleft()
            if depth == max_hops:
                continue
            for neighbour, relation in self._neighbours.get(node, []):
                if neighbour in previous:
                    continue
                previous[neighbour] = (node, relation)
                if neighbour == target:
                    return self._unwind(previous, target)
                frontier.append((neighbour, depth + 1))
        return None

    @staticmethod
    def _unwind(previous: dict[int, tuple[int, int]], target: int) -> list[int]:
        relations = []
        node = target
        while previous[node][0] != -1:
            node, relation = previous[node]
            relations.append(relation)
        return relations[::-1]

    def paths_between(self, store: RecordStore, entity_ids: list[str], max_hops: int = 3,
                      limit: int = 10) -> list[RelationPath]:
        """Return shortest paths between every pair of the given entities, shortest first, with evidence."""
        positions = [self.graph.entity_position[e] for e in dict.fromkeys(entity_ids) if e in self.graph.entity_position]
        found: list[tuple[int, int, list[int]]] = []
        for source, target in combinations(positions, 2):
            relations = self.shortest_path(source, target, max_hops)
            if relations:
                found.append((source, target, relations))
        found.sort(key=lambda item: len(item[2]))
        found = found[:limit]

        evidence = _first_evidence(store, sorted({self.graph.relations[r].relation_id for _, _, rs in found for r in rs}))
        paths = []
        for source, target, relations in found:
            steps = []
            for index in relations:
                relation = self.graph.relations[index]
                chunk_id, start, end = evidence.get(relation.relation_id, ("", 0, 0))
                steps.append(Fact(
                    relation.relation_id,
                    self.graph.entity_ids[relation.subject], self.graph.entity_names[relation.subject],
                    relation.predicate,
                    self.graph.entity_ids[relation.object], self.graph.entity_names[relation.object],
                    chunk_id, start, end,
                ))
            paths.append(RelationPath(self.graph.entity_ids[source], self.graph.entity_ids[target], steps))
        return paths


def _first_evidence(store: RecordStore, relation_ids: list[str]) -> dict[str, tuple[str, int, int]]:
    """Return {relation id: (chunk id, start, end)} of its first evidence by (chunk id, start)."""
    if not relation_ids:
        return {}
    rows = store.iter_table(
        "SELECT relation_id, chunk_id, start, \"end\" FROM relation_evidence "
        f"WHERE relation_id IN ({','.join('?' * len(relation_ids))}) ORDER BY relation_id, chunk_id, start",
        relation_ids,
    )
    evidence: dict[str, tuple[str, int, int]] = {}
    for relation_id, chunk_id, start, end in rows:
        evidence.setdefault(relation_id, (chunk_id, start, end))
    return evidence
