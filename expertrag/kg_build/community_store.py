"""Storage of entity communities and their summaries in the knowledge base's records.sqlite.

The tables live beside the RecordStore's own tables and are created here, so the record
store's schema stays unchanged. A community id is derived from its level and sorted
member ids, so a rebuild that finds the same membership finds the same id and keeps the
summary already written for it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from expertrag.kg_build.store import RecordStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS communities (
    community_id TEXT PRIMARY KEY, level INTEGER NOT NULL, parent_id TEXT, size INTEGER NOT NULL,
    top_entities TEXT NOT NULL, chunk_ids TEXT NOT NULL, title TEXT, summary TEXT, summary_model TEXT,
    summarized_at REAL, embedding BLOB, built_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS communities_by_level ON communities (level);
CREATE TABLE IF NOT EXISTS community_members (
    community_id TEXT NOT NULL, entity_id TEXT NOT NULL, PRIMARY KEY (community_id, entity_id)
);
CREATE INDEX IF NOT EXISTS community_members_by_entity ON community_members (entity_id);
"""

_COLUMNS = ("community_id", "level", "parent_id", "size", "top_entities", "chunk_ids", "title", "summary",
            "summary_model", "summarized_at", "embedding")


def community_id_for(level: int, member_ids: Sequence[str]) -> str:
    """Return the id of the community at ``level`` with these members, stable across rebuilds."""
    digest = hashlib.sha1("\n".join(sorted(member_ids)).encode("utf-8")).hexdigest()[:12]
    return f"c{level}-{digest}"


@dataclass
class Community:
    """A group of entities found by Leiden, with the evidence its summary is written from.

    ``top_entities`` are entity ids ordered by weighted degree inside the community.
    ``chunk_ids`` are the chunks that mention most members, best first: the summary is
    written from them, so answers built on the summary cite them.
    """

    community_id: str
    level: int
    parent_id: str | None
    member_ids: list[str]
    top_entities: list[str] = field(default_factory=list)
    chunk_ids: list[str] = field(default_factory=list)
    title: str | None = None
    summary: str | None = None
    summary_model: str | None = None
    summarized_at: float | None = None
    embedding: np.ndarray | None = None
    size: int = -1
    """Number of member entities; stays right when the members were not loaded."""

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.member_ids)

    @property
    def has_summary(self) -> bool:
        """Whether the LLM summary has been written."""
        return bool(self.summary)


class CommunityStore:
    """Reader and writer of communities, through a RecordStore's connection and transactions."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        existing = {row[0] for row in store.iter_table("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # Only a knowledge base without the tables pays for a write transaction here, so
        # opening the store for a query does not wait for an ingest's write lock.
        if not {"communities", "community_members"} <= existing:
            with store.transaction() as db:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)

    def replace_all(self, communities: Sequence[Community]) -> tuple[int, int]:
        """Replace the stored communities with ``communities`` in one transaction.

        A community whose id is already stored keeps its title, summary and embedding,
        because the same id means the same level and members. Returns (kept summaries,
        removed communities).
        """
        previous = {c.community_id: c for c in self.list(with_members=False)}
        kept = 0
        with self.store.transaction() as db:
            db.execute("DELETE FROM community_members")
            db.execute("DELETE FROM communities")
            now = time.time()
            for community in communities:
                old = previous.get(community.community_id)
                if old is not None and old.has_summary:
                    community.title, community.summary = old.title, old.summary
                    community.summary_model, community.summarized_at = old.summary_model, old.summarized_at
                    community.embedding = old.embedding
                    kept += 1
                db.execute(
                    f"INSERT INTO communities ({', '.join(_COLUMNS)}, built_at) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                    (community.community_id, community.level, community.parent_id, community.size,
                     json.dumps(community.top_entities), json.dumps(community.chunk_ids), community.title,
                     community.summary, community.summary_model, community.summarized_at,
                     _vector_bytes(community.embedding), now),
                )
                db.executemany(
                    "INSERT INTO community_members (community_id, entity_id) VALUES (?, ?)",
                    [(community.community_id, entity_id) for entity_id in community.member_ids],
                )
        removed = len(set(previous) - {c.community_id for c in communities})
        return kept, removed

    def write_summary(self, community_id: str, title: str, summary: str, model: str, embedding: np.ndarray | None) -> None:
        """Store the summary of one community; each summary is its own transaction, so a crash keeps earlier ones."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE communities SET title = ?, summary = ?, summary_model = ?, summarized_at = ?, embedding = ? "
                "WHERE community_id = ?",
                (title, summary, model, time.time(), _vector_bytes(embedding), community_id),
            )

    def list(self, level: int | None = None, with_members: bool = True, summarized_only: bool = False) -> list[Community]:
        """Return stored communities ordered by level, then size (largest first), then id."""
        conditions, parameters = [], []
        if level is not None:
            conditions.append("level = ?")
            parameters.append(level)
        if summarized_only:
            conditions.append("summary IS NOT NULL AND summary != ''")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = list(self.store.iter_table(
            f"SELECT {', '.join(_COLUMNS)} FROM communities {where} ORDER BY level, size DESC, community_id", parameters))
        members: dict[str, list[str]] = {}
        if with_members:
            for community_id, entity_id in self.store.iter_table(
                    "SELECT community_id, entity_id FROM community_members ORDER BY community_id, entity_id"):
                members.setdefault(community_id, []).append(entity_id)
        return [_community_from_row(row, members.get(row[0], [])) for row in rows]

    def get(self, community_id: str) -> Community | None:
        """Return one community with its members, or None."""
        rows = list(self.store.iter_table(
            f"SELECT {', '.join(_COLUMNS)} FROM communities WHERE community_id = ?", (community_id,)))
        if not rows:
            return None
        members = [row[0] for row in self.store.iter_table(
            "SELECT entity_id FROM community_members WHERE community_id = ? ORDER BY entity_id", (community_id,))]
        return _community_from_row(rows[0], members)

    def counts(self) -> dict[str, int]:
        """Return the number of communities, of those with a summary, and of levels."""
        row = next(self.store.iter_table(
            "SELECT COUNT(*), COUNT(NULLIF(summary, '')), COUNT(DISTINCT level) FROM communities"))
        return {"communities": row[0], "summarized": row[1], "levels": row[2]}


def _vector_bytes(vector: np.ndarray | None) -> bytes | None:
    if vector is None:
        return None
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _community_from_row(row: tuple, member_ids: list[str]) -> Community:
    (community_id, level, parent_id, size, top_entities, chunk_ids, title, summary, summary_model,
     summarized_at, embedding) = row
    return Community(
        community_id=community_id,
        level=level,
        parent_id=parent_id,
        member_ids=member_ids,
        top_entities=json.loads(top_entities),
        chunk_ids=json.loads(chunk_ids),
        title=title,
        summary=summary,
        summary_model=summary_model,
        summarized_at=summarized_at,
        embedding=None if embedding is None else np.frombuffer(embedding, dtype=np.float32),
        size=size,
    )
