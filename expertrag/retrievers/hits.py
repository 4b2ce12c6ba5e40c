"""Retrieval results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
