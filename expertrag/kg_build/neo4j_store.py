"""The Neo4j graph store: the record store's knowledge graph on a Neo4j 5 server, plus chunk vector search.

Graph model. Labels, relationship types and property names are fixed, and every value
from the corpus or from extraction (names, predicates, text) travels as a query
parameter, never as Cypher text:

* ``(:Document {collection, doc_id, title, source, content_hash})``, unique on ``(collection, doc_id)``.
* ``(:Chunk {chunk_id, collection, doc_id, position, start, end, text, n_tokens})-[:PART_OF]->(:Document)``.
* ``(:Chunk)-[:MENTIONS {mention_id, start, end, text}]->(:Entity {entity_id, name, label})``,
  one relationship per stored mention.
* ``(:Entity)-[:RELATED {relation_id, predicate, evidence_*}]->(:Entity)``, one relationship
  per distinct fact. Its evidence is stored as four parallel lists (``evidence_chunk_ids``,
  ``evidence_starts``, ``evidence_ends``, ``evidence_extractors``) with one entry per
  relation-evidence row of the record store, sorted by chunk id and start offset.

With this model the store's counts equal the record store's: entities, relations
(distinct facts) and evidence (fact-chunk links).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from expertrag.errors import EmptyKnowledgeBaseError, GraphStoreError
from expertrag.kg_build.graph_store import SyncReport
from expertrag.kg_build.store import Fact, RecordStore
from expertrag.records import content_id

logger = logging.getLogger(__name__)

# The driver's Bolt schemes. Its HTTP Query API (http://, a preview in driver 6) is not supported here.
BOLT_SCHEMES = frozenset({"bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"})

ProgressCallback = Callable[[str, int, int], None]
"""Called after each written batch with the step name, rows done and rows in that step."""

SCHEMA = [
    "CREATE CONSTRAINT expertrag_entity_id IF NOT EXISTS FOR (e:Entity) REQUIRE e.entity_id IS UNIQUE",
    "CREATE CONSTRAINT expertrag_chunk_id IF NOT EXISTS FOR (c:Chunk) REQUIRE c.chunk_id IS UNIQUE",
    "CREATE CONSTRAINT expertrag_document_key IF NOT EXISTS "
    "FOR (d:Document) REQUIRE (d.collection, d.doc_id) IS UNIQUE",
    "CREATE CONSTRAINT expertrag_relation_id IF NOT EXISTS "
    "FOR ()-[r:RELATED]-() REQUIRE r.relation_id IS UNIQUE",
    "CREATE CONSTRAINT expertrag_mention_id IF NOT EXISTS "
    "FOR ()-[m:MENTIONS]-() REQUIRE m.mention_id IS UNIQUE",
    "CREATE CONSTRAINT expertrag_vector_index_collection IF NOT EXISTS "
    "FOR (v:VectorIndex) REQUIRE v.collection IS UNIQUE",
]

UPSERT_DOCUMENTS = """
UNWIND $rows AS row
MERGE (d:Document {collection: row.collection, doc_id: row.doc_id})
SET d.title = row.title, d.source = row.source, d.content_hash = row.content_hash
"""
UPSERT_ENTITIES = """
UNWIND $rows AS row
MERGE (e:Entity {entity_id: row.entity_id})
SET e.name = row.name, e.label = row.label
"""
UPSERT_CHUNKS = """
UNWIND $rows AS row
MERGE (c:Chunk {chunk_id: row.chunk_id})
SET c.collection = row.collection, c.doc_id = row.doc_id, c.position = row.position,
    c.start = row.start, c.end = row.end, c.text = row.text, c.n_tokens = row.n_tokens
WITH c, row
MATCH (d:Document {collection: row.collection, doc_id: row.doc_id})
MERGE (c)-[:PART_OF]->(d)
"""
UPSERT_MENTIONS = """
UNWIND $rows AS row
MATCH (c:Chunk {chunk_id: row.chunk_id})
MATCH (e:Entity {entity_id: row.entity_id})
MERGE (c)-[m:MENTIONS {mention_id: row.mention_id}]->(e)
SET m.start = row.start, m.end = row.end, m.text = row.text
"""
UPSERT_RELATIONS = """
UNWIND $rows AS row
MATCH (s:Entity {entity_id: row.subject_id})
MATCH (o:Entity {entity_id: row.object_id})
MERGE (s)-[r:RELATED {relation_id: row.relation_id}]->(o)
SET r.predicate = row.predicate,
    r.evidence_chunk_ids = row.evidence_chunk_ids, r.evidence_starts = row.evidence_starts,
    r.evidence_ends = row.evidence_ends, r.evidence_extractors = row.evidence_extractors
"""

DELETE_RELATIONS = "UNWIND $rows AS key MATCH ()-[r:RELATED {relation_id: key}]->() DELETE r"
DELETE_MENTIONS = "UNWIND $rows AS key MATCH ()-[m:MENTIONS {mention_id: key}]->() DELETE m"
DELETE_CHUNKS = "UNWIND $rows AS key MATCH (c:Chunk {chunk_id: key}) DETACH DELETE c"
DELETE_DOCUMENTS = (
    "UNWIND $rows AS row MATCH (d:Document {collection: row.collection, doc_id: row.doc_id}) DETACH DELETE d"
)
DELETE_ENTITIES = "UNWIND $rows AS key MATCH (e:Entity {entity_id: key}) DETACH DELETE e"

READ_DOCUMENTS = """
MATCH (d:Document) WHERE d.collection IS NOT NULL AND d.doc_id IS NOT NULL
RETURN d.collection AS collection, d.doc_id AS doc_id, d.title AS title, d.source AS source,
       d.content_hash AS content_hash
"""
READ_CHUNKS = """
MATCH (c:Chunk) WHERE c.chunk_id IS NOT NULL
RETURN c.chunk_id AS chunk_id, c.collection AS collection, c.doc_id AS doc_id, c.position AS position,
       c.start AS start, c.end AS end, c.n_tokens AS n_tokens
"""
READ_ENTITIES = """
MATCH (e:Entity) WHERE e.entity_id IS NOT NULL
RETURN e.entity_id AS entity_id, e.name AS name, e.label AS label
"""
READ_MENTIONS = """
MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity) WHERE m.mention_id IS NOT NULL
RETURN m.mention_id AS mention_id, c.chunk_id AS chunk_id, e.entity_id AS entity_id,
       m.start AS start, m.end AS end
"""
READ_RELATIONS = """
MATCH (s:Entity)-[r:RELATED]->(o:Entity) WHERE r.relation_id IS NOT NULL
RETURN r.relation_id AS relation_id, s.entity_id AS subject_id, r.predicate AS predicate,
       o.entity_id AS object_id, r.evidence_chunk_ids AS evidence_chunk_ids,
       r.evidence_starts AS evidence_starts, r.evidence_ends AS evidence_ends,
       r.evidence_extractors AS evidence_extractors
"""

# The columns compared to decide whether a stored row changed. Chunk text and mention text
# are left out because the chunk id and the mention id are hashes that cover them.
CHUNK_COMPARED = ("collection", "doc_id", "position", "start", "end", "n_tokens")
MENTION_COMPARED = ("chunk_id", "entity_id", "start", "end")

FACT_FIELDS = """
r.relation_id AS relation_id, s.entity_id AS subject_id, s.name AS subject, r.predicate AS predicate,
o.entity_id AS object_id, o.name AS object, coalesce(r.evidence_chunk_ids[0], '') AS chunk_id,
coalesce(r.evidence_starts[0], 0) AS start, coalesce(r.evidence_ends[0], 0) AS end
"""
NEIGHBORS = f"""
MATCH (:Entity {{entity_id: $entity_id}})-[r:RELATED]-()
WITH DISTINCT r
MATCH (s:Entity)-[r]->(o:Entity)
RETURN {FACT_FIELDS}
ORDER BY relation_id
LIMIT $limit
"""
FACTS_BY_ID = f"""
UNWIND $relation_ids AS key
MATCH (s:Entity)-[r:RELATED {{relation_id: key}}]->(o:Entity)
RETURN {FACT_FIELDS}
"""
# The path length bound is spliced in because Cypher takes no parameter there. It is
# always an int that ``shortest_path`` has checked.
SHORTEST_PATHS = """
MATCH (a:Entity {{entity_id: $source_id}}), (b:Entity {{entity_id: $target_id}})
MATCH p = allShortestPaths((a)-[:RELATED*1..{max_hops}]-(b))
WITH [r IN relationships(p) | r.relation_id] AS relation_ids
RETURN relation_ids ORDER BY relation_ids LIMIT 1
"""
COUNTS = """
CALL () { MATCH (e:Entity) RETURN count(e) AS entities }
CALL () { MATCH ()-[r:RELATED]->() RETURN count(r) AS relations,
          coalesce(sum(size(r.evidence_chunk_ids)), 0) AS evidence }
CALL () { MATCH (d:Document) RETURN count(d) AS documents }
CALL () { MATCH (c:Chunk) RETURN count(c) AS chunks }
CALL () { MATCH ()-[m:MENTIONS]->() RETURN count(m) AS mentions }
RETURN entities, relations, evidence, documents, chunks, mentions
"""

WRITE_VECTORS = """
UNWIND $rows AS row
MATCH (c:Chunk {chunk_id: row.chunk_id})
CALL db.create.setNodeVectorProperty(c, 'embedding', row.vector)
SET c:$($label)
RETURN count(c) AS written
"""
REGISTER_VECTOR_INDEX = """
MERGE (v:VectorIndex {collection: $collection})
SET v.index_name = $index_name, v.label = $label, v.dimensions = $dimensions, v.vectors = $vectors
"""
# The index name and label are spliced in because Cypher takes no parameter there. They come
# from ``vector_index_names``: a fixed prefix and a hex hash of the collection name, never its text.
CREATE_VECTOR_INDEX = """
CREATE VECTOR INDEX {index_name} IF NOT EXISTS FOR (c:{label}) ON (c.embedding)
OPTIONS {{indexConfig: {{`vector.dimensions`: $dimensions, `vector.similarity_function`: 'cosine',
                        `vector.quantization.enabled`: $quantization}}}}
"""
QUERY_VECTOR_INDEX = """
CALL db.index.vector.queryNodes($index_name, $k, $vector) YIELD node, score
RETURN node.chunk_id AS chunk_id, score
"""


@dataclass(frozen=True)
class GraphRows:
    """The graph of a record store (or of the Neo4j database) as rows keyed by their ids."""

    documents: dict[tuple[str, str], dict[str, Any]]
    chunks: dict[str, dict[str, Any]]
    entities: dict[str, dict[str, Any]]
    mentions: dict[str, dict[str, Any]]
    relations: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class VectorIndexInfo:
    """A collection's chunk vector index: its Neo4j name, the label it covers and the vector size."""

    collection: str
    index_name: str
    label: str
    dimensions: int


def vector_index_names(collection: str) -> tuple[str, str]:
    """Return the (index name, node label) of a collection's vector index, built from a hash of its name."""
    digest = content_id(collection, length=16)
    return f"expertrag_chunk_vectors_{digest}", f"ChunkVectors_{digest}"


def redact_uri(uri: str) -> str:
    """Return ``uri`` without a user name or password in its authority part."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_record_store(store: RecordStore) -> GraphRows:
    """Read the graph of a record store: documents, chunks, entities, mentions and relations with evidence."""
    documents = {
        (row[0], row[1]): {"collection": row[0], "doc_id": row[1], "title": row[2], "source": row[3],
                           "content_hash": row[4]}
        for row in store.iter_table("SELECT collection, doc_id, title, source, content_hash FROM documents")
    }
    chunks = {
        row[0]: {"chunk_id": row[0], "collection": row[1], "doc_id": row[2], "position": row[3],
                 "start": row[4], "end": row[5], "text": row[6], "n_tokens": row[7]}
        for row in store.iter_table(
            'SELECT chunk_id, collection, doc_id, position, start, "end", text, n_tokens FROM chunks')
    }
    entities = {
        row[0]: {"entity_id": row[0], "name": row[1], "label": row[2]}
        for row in store.iter_table("SELECT entity_id, name, label FROM entities")
    }
    mentions = {
        row[0]: {"mention_id": row[0], "entity_id": row[1], "chunk_id": row[2], "start": row[3], "end": row[4],
                 "text": row[5]}
        for row in store.iter_table('SELECT mention_id, entity_id, chunk_id, start, "end", text FROM mentions')
    }
    relations = {
        row[0]: {"relation_id": row[0], "subject_id": row[1], "predicate": row[2], "object_id": row[3],
                 "evidence_chunk_ids": [], "evidence_starts": [], "evidence_ends": [], "evidence_extractors": []}
        for row in store.iter_table("SELECT relation_id, subject_id, predicate, object_id FROM relations")
    }
    evidence_rows = store.iter_table(
        'SELECT relation_id, chunk_id, start, "end", extractor FROM relation_evidence '
        "ORDER BY relation_id, chunk_id, start"
    )
    for relation_id, chunk_id, start, end, extractor in evidence_rows:
        relation = relations.get(relation_id)
        if relation is None:
            continue
        relation["evidence_chunk_ids"].append(chunk_id)
        relation["evidence_starts"].append(start)
        relation["evidence_ends"].append(end)
        relation["evidence_extractors"].append(extractor)
    return drop_dangling(GraphRows(documents, chunks, entities, mentions, relations))


def drop_dangling(rows: GraphRows) -> GraphRows:
    """Leave out mentions and relations whose chunk or entities are missing, with a warning.

    Their MATCH would find nothing, so the rows would never be written and every later
    ``sync`` would try them again.
    """
    mentions = {key: row for key, row in rows.mentions.items()
                if row["chunk_id"] in rows.chunks and row["entity_id"] in rows.entities}
    relations = {key: row for key, row in rows.relations.items()
                 if row["subject_id"] in rows.entities and row["object_id"] in rows.entities}
    dropped_mentions = len(rows.mentions) - len(mentions)
    dropped_relations = len(rows.relations) - len(relations)
    if dropped_mentions or dropped_relations:
        logger.warning("Skipping %d mentions and %d relations of the record store whose chunk or entity is missing",
                       dropped_mentions, dropped_relations)
    return GraphRows(rows.documents, rows.chunks, rows.entities, mentions, relations)


def evidence_links(relation: dict[str, Any]) -> dict[tuple[str, int], tuple[int, str]]:
    """Return a relation row's evidence as {(chunk id, start): (end, extractor)}."""
    return {
        (chunk_id, start): (end, extractor)
        for chunk_id, start, end, extractor in zip(
            relation.get("evidence_chunk_ids") or [], relation.get("evidence_starts") or [],
            relation.get("evidence_ends") or [], relation.get("evidence_extractors") or [],
        )
    }


def changed_rows(
    desired: dict[Any, dict[str, Any]], current: dict[Any, dict[str, Any]], compared: Sequence[str]
) -> list[dict[str, Any]]:
    """Return the desired rows that are missing from ``current`` or differ in a ``compared`` column."""
    result = []
    for key, row in desired.items():
        existing = current.get(key)
        if existing is None or any(existing.get(column) != row[column] for column in compared):
            result.append(row)
    return result


def _collect(tx: Any, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a query in a managed transaction and return its records as dicts."""
    return [record.data() for record in tx.run(query, parameters)]


class Neo4jGraphStore:
    """A ``GraphStore`` on a Neo4j 5 server, written in batches of ``UNWIND $rows ... MERGE`` queries.

    Writes go through the driver's managed transactions, which retry transient errors and
    lost connections for up to ``max_retry_seconds``. All writes are MERGE or DELETE by id,
    so a retried batch, or a ``sync`` run again after a failure, changes nothing twice.

    Example::

        with Neo4jGraphStore("bolt://127.0.0.1:7687") as graph:
            report = graph.sync(record_store)
            print(graph.counts(), report.added)
    """

    def __init__(
        self,
        uri: str,
        user: str | None = None,
        password: str | None = None,
        database: str = "neo4j",
        batch_size: int = 1000,
        max_retry_seconds: float = 30.0,
        connection_timeout: float = 10.0,
    ) -> None:
        """Connect to Neo4j and check that ``database`` runs a query.

        Args:
            uri: Bolt URI such as ``bolt://127.0.0.1:7687`` (or ``neo4j://`` for a cluster).
            user: User name, or None to connect without auth.
            password: Password of ``user``. Errors and logs never show it.
            database: Database that holds the graph.
            batch_size: Rows per write transaction.
            max_retry_seconds: How long a managed transaction keeps retrying transient errors.
            connection_timeout: Seconds to wait for a TCP connection.

        Raises:
            GraphStoreError: The URI is invalid, the server is unreachable, the credentials are
                rejected or the database does not exist. The message names the URI, never the password.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.uri = uri
        self.database = database
        self.batch_size = batch_size
        self._display_uri = redact_uri(uri)
        self._driver = self._connect(user, password, max_retry_seconds, connection_timeout)
        self._schema_ready = False

    def _connect(self, user: str | None, password: str | None, max_retry_seconds: float,
                 connection_timeout: float) -> Any:
        from neo4j.exceptions import ConfigurationError

        import neo4j

        scheme = self.uri.split("://", 1)[0].lower() if "://" in self.uri else ""
        if scheme not in BOLT_SCHEMES:
            raise GraphStoreError(
                f"Invalid Neo4j URI {self._display_uri!r}: the scheme must be one of "
                f"{', '.join(sorted(BOLT_SCHEMES))}, for example bolt://127.0.0.1:7687."
            )
        if self._display_uri != self.uri:
            raise GraphStoreError(
                f"Invalid Neo4j URI {self._display_uri!r}: it contains a user name or password. "
                "Pass them as user= and password= instead."
            )
        auth = (user, password or "") if user else None
        # On an empty database every read warns that its property keys do not exist yet.
        # Those UNRECOGNIZED notifications would flood the log on a first sync.
        if hasattr(neo4j, "NotificationDisabledClassification"):
            quiet = {"notifications_disabled_classifications": ["UNRECOGNIZED"]}
        else:
            quiet = {"notifications_disabled_categories": ["UNRECOGNIZED"]}
        try:
            driver = neo4j.GraphDatabase.driver(
                self.uri, auth=auth, max_transaction_retry_time=max_retry_seconds,
                connection_timeout=connection_timeout, user_agent="expertrag", **quiet,
            )
        except (ConfigurationError, ValueError) as error:
            raise GraphStoreError(
                f"Invalid Neo4j URI {self._display_uri!r}: {self._scrub(error)}. "
                "Use bolt://HOST:PORT or neo4j://HOST:PORT."
            ) from None
        try:
            with self._errors("connecting"):
                driver.verify_connectivity()
                with driver.session(database=self.database) as session:
                    session.run("RETURN 1").consume()
        except BaseException:
            driver.close()
            raise
        logger.info("Connected to Neo4j at %s, database %s", self._display_uri, self.database)
        return driver

    def _scrub(self, error: BaseException) -> str:
        """Return an error's message with the URI as given replaced by its redacted form."""
        message = getattr(error, "message", None) or str(error)
        return str(message).replace(self.uri, self._display_uri)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn driver errors into ``GraphStoreError`` with the URI and what was being done."""
        from neo4j.exceptions import AuthError, ClientError, DriverError, Neo4jError, ServiceUnavailable, SessionExpired

        where = f"Neo4j at {self._display_uri} (database {self.database!r})"
        try:
            yield
        except AuthError:
            raise GraphStoreError(
                f"{where} rejected the credentials while {action}. Check the user name and password."
            ) from None
        except ClientError as error:
            if error.code == "Neo.ClientError.Database.DatabaseNotFound":
                raise GraphStoreError(
                    f"{where}: the database does not exist. Create it or pass another database name."
                ) from None
            raise GraphStoreError(
                f"{where} rejected a query while {action}: {error.code}: {self._scrub(error)}"
            ) from None
        except (ServiceUnavailable, SessionExpired) as error:
            raise GraphStoreError(
                f"Cannot reach {where} while {action}: {self._scrub(error)}. Check that the server is running and "
                "listening on that address; a sync can be run again and resumes where it stopped."
            ) from None
        except Neo4jError as error:
            raise GraphStoreError(f"{where} failed while {action}: {error.code}: {self._scrub(error)}") from None
        except DriverError as error:
            raise GraphStoreError(f"The Neo4j driver failed while {action} on {where}: {self._scrub(error)}") from None

    # Low-level reads and writes

    def _read(self, query: str, **parameters: Any) -> list[dict[str, Any]]:
        with self._errors("reading"):
            with self._driver.session(database=self.database) as session:
                return session.execute_read(_collect, query, parameters)

    def _write(self, session: Any, query: str, parameters: dict[str, Any], action: str) -> list[dict[str, Any]]:
        """Run one write transaction, and run it again when the outcome of its commit is unknown.

        The driver retries failed transactions but raises ``IncompleteCommit`` when the
        connection drops during COMMIT, because it cannot know whether the commit happened.
        """
        from neo4j.exceptions import IncompleteCommit

        attempts = 3
        with self._errors(action):
            for attempt in range(1, attempts + 1):
                try:
                    return session.execute_write(_collect, query, parameters)
                except IncompleteCommit:
                    # The writes are MERGE or DELETE by id, so running the batch again is safe.
                    if attempt == attempts:
                        raise
                    logger.warning("Commit outcome unknown while %s on %s (attempt %d of %d). Running the batch again.",
                                   action, self._display_uri, attempt, attempts)
        raise AssertionError("unreachable")

    def _write_batches(self, session: Any, query: str, rows: Sequence[Any], step: str,
                       progress: ProgressCallback | None) -> None:
        for first in range(0, len(rows), self.batch_size):
            batch = list(rows[first : first + self.batch_size])
            self._write(session, query, {"rows": batch}, step)
            if progress is not None:
                progress(step, first + len(batch), len(rows))

    def ensure_schema(self) -> None:
        """Create the uniqueness constraints (and with them the indexes) that the writes look rows up by."""
        if self._schema_ready:
            return
        with self._driver.session(database=self.database) as session:
            for statement in SCHEMA:
                with self._errors("creating constraints"):
                    session.run(statement).consume()
        self._schema_ready = True

    # Sync

    def read_graph(self) -> GraphRows:
        """Read what the database holds, in the same row shapes as ``read_record_store``."""
        documents = {(row["collection"], row["doc_id"]): row for row in self._read(READ_DOCUMENTS)}
        chunks = {row["chunk_id"]: row for row in self._read(READ_CHUNKS)}
        entities = {row["entity_id"]: row for row in self._read(READ_ENTITIES)}
        mentions = {row["mention_id"]: row for row in self._read(READ_MENTIONS)}
        relations = {row["relation_id"]: row for row in self._read(READ_RELATIONS)}
        return GraphRows(documents, chunks, entities, mentions, relations)

    def sync(self, store: RecordStore, progress: ProgressCallback | None = None) -> SyncReport:
        """Make the database hold exactly the record store's graph, writing only what differs.

        ``added`` counts documents, chunks, entities, mentions, relations and evidence links
        that were created or changed; ``removed`` counts those deleted or changed. A second
        run reports 0 and 0. Chunk vectors are not part of the sync: new chunks get theirs
        from ``write_chunk_vectors``.

        NOTE: both graphs are read into memory for the comparison (chunk text only from the
        record store), so memory grows with the size of the graph.

        Raises:
            GraphStoreError: The server failed or stayed unreachable longer than the retry time.
                What was written before stays, and the next ``sync`` resumes from there.
        """
        started = time.perf_counter()
        desired = read_record_store(store)
        self.ensure_schema()
        current = self.read_graph()
        added, removed = self._count_changes(desired, current)

        with self._driver.session(database=self.database) as session:
            # Relationships go first so that no DETACH DELETE below removes one uncounted.
            self._write_batches(session, DELETE_RELATIONS, sorted(current.relations.keys() - desired.relations.keys()),
                                "delete relations", progress)
            self._write_batches(session, DELETE_MENTIONS, sorted(current.mentions.keys() - desired.mentions.keys()),
                                "delete mentions", progress)
            self._write_batches(session, DELETE_CHUNKS, sorted(current.chunks.keys() - desired.chunks.keys()),
                                "delete chunks", progress)
            stale_documents = sorted(current.documents.keys() - desired.documents.keys())
            self._write_batches(session, DELETE_DOCUMENTS,
                                [{"collection": c, "doc_id": d} for c, d in stale_documents],
                                "delete documents", progress)
            self._write_batches(session, DELETE_ENTITIES, sorted(current.entities.keys() - desired.entities.keys()),
                                "delete entities", progress)

            self._write_batches(session, UPSERT_DOCUMENTS,
                                changed_rows(desired.documents, current.documents, ("title", "source", "content_hash")),
                                "write documents", progress)
            self._write_batches(session, UPSERT_ENTITIES,
                                changed_rows(desired.entities, current.entities, ("name", "label")),
                                "write entities", progress)
            self._write_batches(session, UPSERT_CHUNKS, changed_rows(desired.chunks, current.chunks, CHUNK_COMPARED),
                                "write chunks", progress)
            self._write_batches(session, UPSERT_MENTIONS,
                                changed_rows(desired.mentions, current.mentions, MENTION_COMPARED),
                                "write mentions", progress)
            relation_columns = ("subject_id", "predicate", "object_id", "evidence_chunk_ids", "evidence_starts",
                                "evidence_ends", "evidence_extractors")
            self._write_batches(session, UPSERT_RELATIONS,
                                changed_rows(desired.relations, current.relations, relation_columns),
                                "write relations", progress)

        report = SyncReport(added=added, removed=removed, seconds=time.perf_counter() - started)
        logger.info("Synced Neo4j at %s: %d added, %d removed in %.1f s (%d entities, %d relations)",
                    self._display_uri, report.added, report.removed, report.seconds,
                    len(desired.entities), len(desired.relations))
        return report

    @staticmethod
    def _count_changes(desired: GraphRows, current: GraphRows) -> tuple[int, int]:
        """Return (added, removed) graph elements; a changed element counts once in each."""
        added = removed = 0
        node_kinds = [
            (desired.documents, current.documents, ("title", "source", "content_hash")),
            (desired.chunks, current.chunks, CHUNK_COMPARED),
            (desired.entities, current.entities, ("name", "label")),
            (desired.mentions, current.mentions, MENTION_COMPARED),
        ]
        for desired_rows, existing_rows, compared in node_kinds:
            changed = len(changed_rows(desired_rows, existing_rows, compared))
            new = len(desired_rows.keys() - existing_rows.keys())
            added += changed
            removed += len(existing_rows.keys() - desired_rows.keys()) + (changed - new)

        for relation_id in desired.relations.keys() | current.relations.keys():
            desired_relation = desired.relations.get(relation_id)
            existing_relation = current.relations.get(relation_id)
            desired_links = evidence_links(desired_relation) if desired_relation else {}
            existing_links = evidence_links(existing_relation) if existing_relation else {}
            if existing_relation is None:
                added += 1
            elif desired_relation is None:
                removed += 1
            elif any(existing_relation.get(column) != desired_relation[column]
                     for column in ("subject_id", "predicate", "object_id")):
                added += 1
                removed += 1
            changed_links = {key for key in desired_links.keys() & existing_links.keys()
                             if desired_links[key] != existing_links[key]}
            added += len(desired_links.keys() - existing_links.keys()) + len(changed_links)
            removed += len(existing_links.keys() - desired_links.keys()) + len(changed_links)
        return added, removed

    def write_naive(self, store: RecordStore) -> int:
        """Write the record store's graph with one auto-commit query per row and one MERGE per triple.

        Only for measuring the batched ``sync`` against: it is many times slower, does not
        retry and does not delete anything. Returns the number of triples (relations) written.
        """
        rows = read_record_store(store)
        self.ensure_schema()
        steps = [
            (UPSERT_DOCUMENTS, list(rows.documents.values())),
            (UPSERT_ENTITIES, list(rows.entities.values())),
            (UPSERT_CHUNKS, list(rows.chunks.values())),
            (UPSERT_MENTIONS, list(rows.mentions.values())),
            (UPSERT_RELATIONS, list(rows.relations.values())),
        ]
        with self._errors("writing rows one by one"):
            with self._driver.session(database=self.database) as session:
                for query, step_rows in steps:
                    for row in step_rows:
                        session.run(query, rows=[row]).consume()
        return len(rows.relations)

    # Queries

    def counts(self) -> dict[str, int]:
        """Return the number of ``entities``, ``relations``, ``evidence`` links, ``documents``, ``chunks`` and ``mentions``."""
        row = self._read(COUNTS)[0]
        return {key: int(value) for key, value in row.items()}

    def neighbors(self, entity_id: str, limit: int = 50) -> list[Fact]:
        """Return facts whose subject or object is ``entity_id``, ordered by relation id.

        Each fact carries its first evidence in (chunk id, start) order.
        """
        return [Fact(**row) for row in self._read(NEIGHBORS, entity_id=entity_id, limit=limit)]

    def shortest_path(self, source_id: str, target_id: str, max_hops: int = 4) -> list[Fact]:
        """Return the facts along one shortest undirected relation path, or [] when none is within ``max_hops``.

        Among paths of equal length, the one whose relation ids sort first (read from source
        to target) wins. A breadth-first search that visits relations in id order finds the same path.
        """
        if isinstance(max_hops, bool) or not isinstance(max_hops, int) or max_hops < 0:
            raise ValueError(f"max_hops must be a non-negative int, not {max_hops!r}")
        if source_id == target_id or max_hops == 0:
            return []
        # NOTE: allShortestPaths enumerates every shortest path, which can be slow between hubs of a dense graph.
        rows = self._read(SHORTEST_PATHS.format(max_hops=max_hops), source_id=source_id, target_id=target_id)
        if not rows:
            return []
        relation_ids = rows[0]["relation_ids"]
        facts = {row["relation_id"]: Fact(**row) for row in self._read(FACTS_BY_ID, relation_ids=relation_ids)}
        return [facts[relation_id] for relation_id in relation_ids]

    # Chunk vectors

    def write_chunk_vectors(self, store: RecordStore, collection: str, quantization: bool = False,
                            progress: ProgressCallback | None = None) -> int:
        """Store a collection's chunk embeddings on its Chunk nodes and build a cosine vector index over them.

        The index takes its dimensions from the data; an index of another size or
        quantization setting is dropped and built again. Returns the number of vectors written.

        Args:
            store: Record store that contains the vectors.
            collection: Collection whose chunk vectors are written.
            quantization: Build the index with Neo4j's vector quantization, which Neo4j 5.26
                turns on by default. It makes the index smaller, but scores and ranks become
                approximate: on 8-dimensional test vectors scores moved by about 0.01.
            progress: Called after each written batch.

        Raises:
            EmptyKnowledgeBaseError: The collection has no chunks in the record store.
            GraphStoreError: Some chunks are not in the graph yet (run ``sync`` first) or Neo4j failed.
        """
        chunk_ids, matrix = store.chunk_vectors(collection)
        if not chunk_ids:
            raise EmptyKnowledgeBaseError(f"Collection {collection!r} has no chunks with vectors in {store.path}")
        dimensions = int(matrix.shape[1])
        zero_vectors = int(np.count_nonzero(~np.any(matrix, axis=1)))
        if zero_vectors:
            logger.warning("%d chunks of collection %s have all-zero vectors. The vector index leaves them out "
                           "because cosine similarity is undefined for them.", zero_vectors, collection)
        index_name, label = vector_index_names(collection)
        self.ensure_schema()
        self._drop_vector_index_of_other_config(index_name, dimensions, quantization)

        written = 0
        with self._driver.session(database=self.database) as session:
            for first in range(0, len(chunk_ids), self.batch_size):
                rows = [{"chunk_id": chunk_id, "vector": vector.tolist()}
                        for chunk_id, vector in zip(chunk_ids[first : first + self.batch_size],
                                                    matrix[first : first + self.batch_size])]
                result = self._write(session, WRITE_VECTORS, {"rows": rows, "label": label}, "writing chunk vectors")
                written += int(result[0]["written"])
                if progress is not None:
                    progress("write chunk vectors", first + len(rows), len(chunk_ids))
            if written < len(chunk_ids):
                raise GraphStoreError(
                    f"{len(chunk_ids) - written} of {len(chunk_ids)} chunks of collection {collection!r} are not in "
                    f"Neo4j at {self._display_uri}. Run sync first, then write the vectors again."
                )
            with self._errors("creating the vector index"):
                session.run(CREATE_VECTOR_INDEX.format(index_name=index_name, label=label),
                            dimensions=dimensions, quantization=quantization).consume()
                session.run("CALL db.awaitIndexes(300)").consume()
            self._write(session, REGISTER_VECTOR_INDEX,
                        {"collection": collection, "index_name": index_name, "label": label,
                         "dimensions": dimensions, "vectors": written},
                        "registering the vector index")
        logger.info("Wrote %d chunk vectors of %d dimensions for collection %s to index %s",
                    written, dimensions, collection, index_name)
        return written

    def _drop_vector_index_of_other_config(self, index_name: str, dimensions: int, quantization: bool) -> None:
        rows = self._read("SHOW VECTOR INDEXES YIELD name, options WHERE name = $name RETURN options",
                          name=index_name)
        if not rows:
            return
        config = rows[0]["options"].get("indexConfig", {})
        existing = (config.get("vector.dimensions"), config.get("vector.quantization.enabled"))
        if existing == (dimensions, quantization):
            return
        logger.info("Dropping vector index %s (dimensions, quantization) = %s to build one with %s",
                    index_name, existing, (dimensions, quantization))
        with self._errors("dropping a vector index"):
            with self._driver.session(database=self.database) as session:
                # The name comes from vector_index_names, a fixed prefix and a hex hash.
                session.run(f"DROP INDEX {index_name} IF EXISTS").consume()

    def vector_indexes(self) -> list[VectorIndexInfo]:
        """Return the chunk vector indexes that ``write_chunk_vectors`` built, by collection name."""
        rows = self._read(
            "MATCH (v:VectorIndex) RETURN v.collection AS collection, v.index_name AS index_name, "
            "v.label AS label, v.dimensions AS dimensions ORDER BY collection"
        )
        return [VectorIndexInfo(**row) for row in rows]

    def vector_search(self, vector: Sequence[float] | np.ndarray, k: int = 10,
                      collection: str | None = None) -> list[tuple[str, float]]:
        """Return the ``k`` chunks nearest to ``vector`` as (chunk id, score), best first.

        The score is Neo4j's cosine similarity mapped to [0, 1]: ``(1 + cos) / 2``. The index
        is approximate (HNSW), so results can differ from an exact search. ``collection`` may
        be left out when only one collection has a vector index.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        index = self._vector_index(collection)
        query = np.asarray(vector, dtype=np.float64).ravel()
        if query.shape[0] != index.dimensions:
            raise ValueError(
                f"The query vector has {query.shape[0]} dimensions, but the vector index of collection "
                f"{index.collection!r} has {index.dimensions}"
            )
        rows = self._read(QUERY_VECTOR_INDEX, index_name=index.index_name, k=k, vector=query.tolist())
        return [(row["chunk_id"], float(row["score"])) for row in rows]

    def _vector_index(self, collection: str | None) -> VectorIndexInfo:
        indexes = self.vector_indexes()
        if collection is not None:
            for index in indexes:
                if index.collection == collection:
                    return index
            raise GraphStoreError(
                f"Collection {collection!r} has no vector index in Neo4j at {self._display_uri}. "
                "Run write_chunk_vectors for it first."
            )
        if len(indexes) == 1:
            return indexes[0]
        if not indexes:
            raise GraphStoreError(
                f"Neo4j at {self._display_uri} has no chunk vector index. Run write_chunk_vectors first."
            )
        names = ", ".join(repr(index.collection) for index in indexes)
        raise GraphStoreError(f"Several collections have vector indexes ({names}). Pass collection= with one of them.")

    # Lifetime

    def close(self) -> None:
        """Close the driver and its connections."""
        self._driver.close()

    def __enter__(self) -> "Neo4jGraphStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
