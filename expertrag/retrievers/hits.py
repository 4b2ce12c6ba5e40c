"""Retrieval results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from expertrag.retrievers.entity_linking import Link
    from expertrag.retrievers.paths import RelationPath


@dataclass
class Hit:
    """A retrieved chunk with its score and the rank each retriever gave it (1 = best)."""

    chunk_id: str
    doc_id: str
    collection: str
    title: str
    text: str
    start: int
    end: int
    score: float
    ranks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the hit as a JSON-ready dict."""
        return asdict(self)


@dataclass
class Retrieval:
    """The hits for one query, with the entity links and relation paths graph retrieval found."""

    hits: list[Hit]
    links: list["Link"] = field(default_factory=list)
    paths: list["RelationPath"] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the retrieval as a JSON-ready dict."""
        return {
            "hits": [hit.to_dict() for hit in self.hits],
            "links": [link.to_dict() for link in self.links],
            "paths": [path.to_dict() for path in self.paths],
            "notes": list(self.notes),
        }
