"""Records that flow through ingestion: documents, chunks, entities, mentions and relations.

Ids are content hashes, so the same input always gets the same id and re-ingesting
it adds nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def content_id(*parts: str, length: int = 16) -> str:
    """Return a hex id of ``length`` characters hashed from ``parts``."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


@dataclass(frozen=True)
class Document:
    """A corpus document and where it was read from.

    ``text`` is what gets chunked: the title and body joined by a blank line when a
    title exists, so chunk offsets point into this string.
    """

    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    line: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """Hash of title and text: a changed document gets a new hash."""
        return content_id(self.title, self.text, length=32)


@dataclass(frozen=True)
class Chunk:
    """A window of a document's text; ``start``/``end`` are character offsets into it."""

    chunk_id: str
    doc_id: str
    collection: str
    position: int
    start: int
    end: int
    text: str
    n_tokens: int


@dataclass(frozen=True)
class Mention:
    """An entity occurrence in a chunk; offsets are into the chunk's document."""

    chunk_id: str
    entity_id: str
    start: int
    end: int
    text: str

    @property
    def mention_id(self) -> str:
        """Id of this occurrence."""
        return content_id(self.chunk_id, self.entity_id, str(self.start), str(self.end))


@dataclass(frozen=True)
class Entity:
    """A resolved graph entity: one node for every mention with the same key."""

    entity_id: str
    name: str
    label: str


@dataclass(frozen=True)
class Relation:
    """A (subject, predicate, object) fact with the chunk and span that state it."""

    subject_id: str
    predicate: str
    object_id: str
    chunk_id: str
    start: int
    end: int
    extractor: str

    @property
    def relation_id(self) -> str:
        """Id of the fact, shared by every chunk that states it."""
        return content_id(self.subject_id, self.predicate, self.object_id)


@dataclass
class Extraction:
    """The entities, mentions and relations an extractor found in one text."""

    entities: list[Entity] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
