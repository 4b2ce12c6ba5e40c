"""SQLite record store: documents, chunks (with their vectors), entities, mentions, relations.

Each ingested batch of documents is one transaction, so an interrupted ingest leaves
every committed batch whole and the next run skips what is already stored.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expertrag.records import Chunk, Document, Entity, Extraction

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL, doc_id TEXT NOT NULL, content_hash TEXT NOT NULL,
    title TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL, line INTEGER,
    metadata TEXT NOT NULL, ingested_at REAL NOT NULL,
    PRIMARY KEY (collection, doc_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id TEXT PRIMARY KEY, collection TEXT NOT NULL, doc_id TEXT NOT NULL,
    position INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    text TEXT NOT NULL, n_tokens INTEGER NOT NULL, embedding BLOB
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (collection, doc_id);
CREATE TABLE IF NOT EXISTS entities (entity_id TEXT PRIMARY KEY, name TEXT NOT NULL, label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mentions (
    mention_id TEXT PRIMARY KEY, entity_id TEXT NOT NULL, chunk_id TEXT NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL, text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mentions_by_entity ON mentions (entity_id);
CREATE INDEX IF NOT EXISTS mentions_by_chunk ON mentions (chunk_id);
CREATE TABLE IF NOT EXISTS relations (
    relation_id TEXT PRIMARY KEY, subject_id TEXT NOT NULL, predicate TEXT NOT NULL, object_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS relations_by_subject ON relations (subject_id);
CREATE INDEX IF NOT EXISTS relations_by_object ON relations (object_id);
CREATE TABLE IF NOT EXISTS relation_evidence (
    relation_id TEXT NOT NULL, chunk_id TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    extractor TEXT NOT NULL, PRIMARY KEY (relation_id, chunk_id, start)
);
CREATE INDEX IF NOT EXISTS evidence_by_chunk ON relation_evidence (chunk_id);
CREATE TABLE IF NOT EXISTS ingest_log (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, source TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, status TEXT NOT NULL,
    documents_added INTEGER NOT NULL DEFAULT 0, documents_unchanged INTEGER NOT NULL DEFAULT 0,
    documents_skipped INTEGER NOT NULL DEFAULT 0, errors TEXT NOT NULL DEFAULT '[]'
);
"""


@dataclass(frozen=True)
class IngestedDocument:
    """A document with everything ingestion derived from it, written in one transaction."""

    document: Document
    chunks: list[Chunk]
    embeddings: np.ndarray
    extraction: Extraction


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back, with the title of its document."""

    chunk_id: str
    collection: str
    doc_id: str
    position: int
    start: int
    end: int
    text: str
    title: str


@dataclass(frozen=True)
class Fact:
    """A relation with readable entity names and one chunk that states it."""

    relation_id: str
    subject_id: str
    subject: str
    predicate: str
    object_id: str
    object: str
    chunk_id: str
    start: int
    end: int


class RecordStore:
    """The SQLite database of one knowledge base; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA foreign_keys=OFF")
        self._connection.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._connection.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one transaction; an exception rolls all of it back."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    # Metadata and collections

    def get_meta(self, key: str) -> str | None:
        """Return a metadata value, or None when unset."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Store a metadata value."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def ensure_collection(self, name: str) -> None:
        """Create a collection if it does not exist."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO collections (name, created_at) VALUES (?, ?)", (name, time.time()))

    def collections(self) -> list[str]:
        """Return the names of all collections."""
        return [row[0] for row in self._query("SELECT name FROM collections ORDER BY name")]

    # Writing

    def document_hashes(self, collection: str) -> dict[str, str]:
        """Return {doc id: content hash} of the stored documents of a collection."""
        rows = self._query("SELECT doc_id, content_hash FROM documents WHERE collection = ?", (collection,))
        return dict(rows)

    def write_documents(self, collection: str, items: Sequence[IngestedDocument]) -> None:
        """Store documents with their chunks, vectors and extractions in one transaction.

        A document already stored under the same id is replaced with everything derived from it.
        """
        with self.transaction() as db:
            for item in items:
                document = item.document
                self._delete_document(db, collection, document.doc_id)
                db.execute(
                    "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (collection, document.doc_id, document.content_hash, document.title, document.text,
                     document.source, document.line, json.dumps(document.metadata), time.time()),
                )
                db.executemany(
                    "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(c.chunk_id, c.collection, c.doc_id, c.position, c.start, c.end, c.text, c.n_tokens,
                      np.ascontiguousarray(vector, dtype=np.float32).tobytes())
                     for c, vector in zip(item.chunks, item.embeddings)],
                )
                self._write_extraction(db, item.extraction)
            self._bump_generation(db, collection)

    @staticmethod
    def _write_extraction(db: sqlite3.Connection, extraction: Extraction) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO entities VALUES (?, ?, ?)",
            [(e.entity_id, e.name, e.label) for e in extraction.entities],
        )
        db.executemany(
            "INSERT OR IGNORE INTO mentions VALUES (?, ?, ?, ?, ?, ?)",
            [(m.mention_id, m.entity_id, m.chunk_id, m.start, m.end, m.text) for m in extraction.mentions],
        )
        db.executemany(
            "INSERT OR IGNORE INTO relations VALUES (?, ?, ?, ?)",
            [(r.relation_id, r.subject_id, r.predicate, r.object_id) for r in extraction.relations],
        )
        db.executemany(
            "INSERT OR IGNORE INTO relation_evidence VALUES (?, ?, ?, ?, ?)",
            [(r.relation_id, r.chunk_id, r.start, r.end, r.extractor) for r in extraction.relations],
        )

    def delete_document(self, collection: str, doc_id: str) -> bool:
        """Delete a document with its chunks, mentions and the relations only it supported."""
        with self.transaction() as db:
            deleted = self._delete_document(db, collection, doc_id)
            if deleted:
                self._bump_generation(db, collection)
            return deleted

    @staticmethod
    def _bump_generation(db: sqlite3.Connection, collection: str) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            (f"generation:{collection}",),
        )

    def generation(self, collection: str) -> int:
        """Return a counter that grows with every change to the collection's chunks."""
        return int(self.get_meta(f"generation:{collection}") or 0)

    @staticmethod
    def _delete_document(db: sqlite3.Connection, collection: str, doc_id: str) -> bool:
        found = db.execute(
            "SELECT 1 FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id)
        ).fetchone()
        if not found:
            return False
        chunk_ids = [row[0] for row in db.execute(
            "SELECT chunk_id FROM chunks WHERE collection = ? AND doc_id = ?", (collection, doc_id))]
        marks = ",".join("?" * len(chunk_ids))
        if chunk_ids:
            entity_ids = [row[0] for row in db.execute(
                f"SELECT DISTINCT entity_id FROM mentions WHERE chunk_id IN ({marks})", chunk_ids)]
            relation_ids = [row[0] for row in db.execute(
                f"SELECT DISTINCT relation_id FROM relation_evidence WHERE chunk_id IN ({marks})", chunk_ids)]
            db.execute(f"DELETE FROM mentions WHERE chunk_id IN ({marks})", chunk_ids)
            db.execute(f"DELETE FROM relation_evidence WHERE chunk_id IN ({marks})", chunk_ids)
            db.execute(f"DELETE FROM chunks WHERE chunk_id IN ({marks})", chunk_ids)
            db.executemany(
                "DELETE FROM relations WHERE relation_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM relation_evidence WHERE relation_evidence.relation_id = relations.relation_id)",
                [(r,) for r in relation_ids],
            )
            db.executemany(
                "DELETE FROM entities WHERE entity_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM mentions WHERE mentions.entity_id = entities.entity_id) "
                "AND NOT EXISTS (SELECT 1 FROM relations WHERE subject_id = entities.entity_id OR object_id = entities.entity_id)",
                [(e,) for e in entity_ids],
            )
        db.execute("DELETE FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id))
        return True

    # Ingestion log

    def start_run(self, collection: str, source: str) -> int:
        """Record the start of an ingest run and return its id."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO ingest_log (collection, source, started_at, status) VALUES (?, ?, ?, 'running')",
                (collection, source, time.time()),
            )
            return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, added: int, unchanged: int, skipped: int, errors: list[str]) -> None:
        """Record the outcome of an ingest run."""
        with self.transaction() as db:
            db.execute(
                "UPDATE ingest_log SET finished_at = ?, status = ?, documents_added = ?, documents_unchanged = ?, "
                "documents_skipped = ?, errors = ? WHERE run_id = ?",
                (time.time(), status, added, unchanged, skipped, json.dumps(errors[:100]), run_id),
            )

    def runs(self) -> list[dict[str, object]]:
        """Return the ingestion log, newest first."""
        columns = ["run_id", "collection", "source", "started_at", "finished_at", "status",
                   "documents_added", "documents_unchanged", "documents_skipped", "errors"]
        rows = self._query(f"SELECT {', '.join(columns)} FROM ingest_log ORDER BY run_id DESC")
        return [dict(zip(columns, row)) for row in rows]

    # Reading

    def counts(self, collection: str | None = None) -> dict[str, int]:
        """Return the number of documents, chunks, entities, mentions and relations."""
        if collection is None:
            tables = ["documents", "chunks", "entities", "mentions", "relations"]
            return {table: self._query(f"SELECT COUNT(*) FROM {table}")[0][0] for table in tables}
        where = "WHERE collection = ?"
        return {
            "documents": self._query(f"SELECT COUNT(*) FROM documents {where}", (collection,))[0][0],
            "chunks": self._query(f"SELECT COUNT(*) FROM chunks {where}", (collection,))[0][0],
        }

    def chunk_vectors(self, collection: str) -> tuple[list[str], np.ndarray]:
        """Return the chunk ids of a collection and their vectors in one matrix, ordered by id."""
        rows = self._query(
            "SELECT chunk_id, embedding FROM chunks WHERE collection = ? ORDER BY chunk_id", (collection,))
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        ids = [row[0] for row in rows]
        matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, matrix

    def vectors_of(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Return {chunk id: vector} for the stored chunks among ``chunk_ids``."""
        if not chunk_ids:
            return {}
        rows = self._query(
            f"SELECT chunk_id, embedding FROM chunks WHERE chunk_id IN ({','.join('?' * len(chunk_ids))})",
            list(chunk_ids),
        )
        return {row[0]: np.frombuffer(row[1], dtype=np.float32) for row in rows}

    def chunk_texts(self, collection: str) -> tuple[list[str], list[str]]:
        """Return the chunk ids of a collection and the text each chunk is searched by, ordered by id."""
        rows = self._query(
            "SELECT c.chunk_id, d.title, c.start, c.text FROM chunks c JOIN documents d "
            "ON d.collection = c.collection AND d.doc_id = c.doc_id WHERE c.collection = ? ORDER BY c.chunk_id",
            (collection,),
        )
        return [row[0] for row in rows], [searchable_text(row[1], row[2], row[3]) for row in rows]

    def get_chunks(self, chunk_ids: Iterable[str]) -> dict[str, StoredChunk]:
        """Return the stored chunks with the given ids; unknown ids are left out."""
        ids = list(dict.fromkeys(chunk_ids))
        found: dict[str, StoredChunk] = {}
        for first in range(0, len(ids), 500):
            batch = ids[first : first + 500]
            rows = self._query(
                "SELECT c.chunk_id, c.collection, c.doc_id, c.position, c.start, c.\"end\", c.text, d.title "
                "FROM chunks c JOIN documents d ON d.collection = c.collection AND d.doc_id = c.doc_id "
                f"WHERE c.chunk_id IN ({','.join('?' * len(batch))})",
                batch,
            )
            found.update({row[0]: StoredChunk(*row) for row in rows})
        return found

    def document_text(self, collection: str, doc_id: str) -> str | None:
        """Return the text of a document, or None when it is not stored."""
        rows = self._query("SELECT text FROM documents WHERE collection = ? AND doc_id = ?", (collection, doc_id))
        return rows[0][0] if rows else None

    def entities_of_chunks(self, chunk_ids: Sequence[str]) -> dict[str, list[str]]:
        """Return {chunk id: entity ids mentioned in it}."""
        if not chunk_ids:
            return {}
        rows = self._query(
            f"SELECT chunk_id, entity_id FROM mentions WHERE chunk_id IN ({','.join('?' * len(chunk_ids))})",
            list(chunk_ids),
        )
        result: dict[str, list[str]] = {}
        for chunk_id, entity_id in rows:
            result.setdefault(chunk_id, []).append(entity_id)
        return result

    def entity_chunk_counts(self, entity_ids: Sequence[str], collection: str) -> dict[str, int]:
        """Return {entity id: number of chunks of the collection that mention it}.

        The CROSS JOIN keeps SQLite from scanning the collection's chunks first: it walks the
        entities' mentions by index and looks each chunk up by key.
        """
        if not entity_ids:
            return {}
        rows = self._query(
            "SELECT m.entity_id, COUNT(DISTINCT m.chunk_id) FROM mentions m CROSS JOIN chunks c ON c.chunk_id = m.chunk_id "
            f"WHERE c.collection = ? AND m.entity_id IN ({','.join('?' * len(entity_ids))}) GROUP BY m.entity_id",
            [collection, *entity_ids],
        )
        return dict(rows)

    def chunks_of_entities(self, entity_ids: Sequence[str], collection: str) -> dict[str, list[str]]:
        """Return {entity id: ids of the collection's chunks that mention it}."""
        if not entity_ids:
            return {}
        rows = self._query(
            "SELECT DISTINCT m.entity_id, m.chunk_id FROM mentions m CROSS JOIN chunks c ON c.chunk_id = m.chunk_id "
            f"WHERE c.collection = ? AND m.entity_id IN ({','.join('?' * len(entity_ids))})",
            [collection, *entity_ids],
        )
        result: dict[str, list[str]] = {}
        for entity_id, chunk_id in rows:
            result.setdefault(entity_id, []).append(chunk_id)
        return result

    def facts_about(self, entity_ids: Sequence[str], limit: int = 50) -> list[Fact]:
        """Return relations whose subject or object is one of ``entity_ids``, each with one supporting chunk."""
        if not entity_ids:
            return []
        marks = ",".join("?" * len(entity_ids))
        rows = self._query(
            "SELECT r.relation_id, r.subject_id, s.name, r.predicate, r.object_id, o.name, "
            "e.chunk_id, e.start, e.\"end\" FROM relations r "
            "JOIN entities s ON s.entity_id = r.subject_id JOIN entities o ON o.entity_id = r.object_id "
            "JOIN relation_evidence e ON e.relation_id = r.relation_id "
            f"WHERE (r.subject_id IN ({marks}) OR r.object_id IN ({marks})) "
            # The first evidence by (chunk id, start) stands for the fact, as in every graph store.
            "AND NOT EXISTS (SELECT 1 FROM relation_evidence f WHERE f.relation_id = e.relation_id "
            "AND (f.chunk_id < e.chunk_id OR (f.chunk_id = e.chunk_id AND f.start < e.start))) "
            "ORDER BY r.relation_id LIMIT ?",
            [*entity_ids, *entity_ids, limit],
        )
        return [Fact(*row) for row in rows]

    def facts_of_chunks(self, chunk_ids: Sequence[str]) -> list[Fact]:
        """Return the relations stated in the given chunks, with their spans there."""
        if not chunk_ids:
            return []
        rows = self._query(
            "SELECT r.relation_id, r.subject_id, s.name, r.predicate, r.object_id, o.name, "
            "e.chunk_id, e.start, e.\"end\" FROM relation_evidence e "
            "JOIN relations r ON r.relation_id = e.relation_id "
            "JOIN entities s ON s.entity_id = r.subject_id JOIN entities o ON o.entity_id = r.object_id "
            f"WHERE e.chunk_id IN ({','.join('?' * len(chunk_ids))}) ORDER BY e.chunk_id, e.start",
            list(chunk_ids),
        )
        return [Fact(*row) for row in rows]

    def get_entity(self, entity_id: str) -> Entity | None:
        """Return one entity, or None."""
        rows = self._query("SELECT entity_id, name, label FROM entities WHERE entity_id = ?", (entity_id,))
        return Entity(*rows[0]) if rows else None

    def find_entities(self, name: str, limit: int = 10) -> list[Entity]:
        """Return entities whose name equals ``name`` (case-insensitive), most mentioned first."""
        rows = self._query(
            "SELECT e.entity_id, e.name, e.label FROM entities e LEFT JOIN mentions m ON m.entity_id = e.entity_id "
            "WHERE lower(e.name) = lower(?) GROUP BY e.entity_id ORDER BY COUNT(m.mention_id) DESC LIMIT ?",
            (name, limit),
        )
        return [Entity(*row) for row in rows]

    def iter_table(self, sql: str, parameters: Sequence[object] = (), batch_size: int = 10_000) -> Iterator[tuple]:
        """Stream the rows of a read-only query in batches."""
        with self._lock:
            cursor = self._connection.execute(sql, parameters)
            rows = cursor.fetchmany(batch_size)
        while rows:
            yield from rows
            with self._lock:
                rows = cursor.fetchmany(batch_size)


def searchable_text(title: str, start: int, text: str) -> str:
    """Return the text a chunk is encoded and searched by: later chunks get their document title in front."""
    if title and start > 0:
        return f"{title}\n\n{text}"
    return text
