"""The interface every graph store implements: the rdflib file store and the Neo4j server store.

The SQLite record store is the source of truth. A graph store holds the knowledge
graph (entities, relations with provenance, the chunks and documents they come
from) for graph queries and export, and ``sync`` brings it up to date with the
record store: it adds what is new, removes what is gone and changes nothing when
run twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from expertrag.kg_build.store import Fact, RecordStore


@dataclass(frozen=True)
class SyncReport:
    """What one ``sync`` changed, in the store's own units (nodes, triples, relationships)."""

    added: int
    removed: int
    seconds: float


@runtime_checkable
class GraphStore(Protocol):
    """A knowledge-graph store that mirrors a record store."""

    def sync(self, store: RecordStore) -> SyncReport:
        """Make the graph store hold exactly the record store's graph."""
        ...

    def counts(self) -> dict[str, int]:
        """Return the number of ``entities``, ``relations`` (distinct facts) and ``evidence`` (fact-chunk links)."""
        ...

    def neighbors(self, entity_id: str, limit: int = 50) -> list[Fact]:
        """Return facts whose subject or object is ``entity_id``, ordered by relation id."""
        ...

    def shortest_path(self, source_id: str, target_id: str, max_hops: int = 4) -> list[Fact]:
        """Return the facts along one shortest undirected relation path, or [] when none is within ``max_hops``.

        Among paths of equal length the store returns the one whose relation ids sort first,
        so every store gives the same answer for the same graph.
        """
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
