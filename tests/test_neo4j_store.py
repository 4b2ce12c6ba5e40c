"""Tests of the Neo4j graph store against a real Neo4j server (see tests/neo4j_fixture.py)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from expertrag.errors import GraphStoreError
from expertrag.kg_build.graph_store import GraphStore
from expertrag.kg_build.neo4j_server import free_port
from expertrag.kg_build.neo4j_store import Neo4jGraphStore, redact_uri
from expertrag.kg_build.rdf import RdfGraphStore
from expertrag.kg_build.store import IngestedDocument, RecordStore
from expertrag.records import Chunk, Document, Entity, Extraction, Mention, Relation, content_id
from tests.neo4j_fixture import clear_database, neo4j_auth, neo4j_uri, start_local_server  # noqa: F401

COLLECTION = "papers"
DIMENSIONS = 8


# Building a record store by hand


@dataclass
class DocumentSpec:
    """A document whose chunks each state some (subject, predicate, object) facts, by entity name."""

    doc_id: str
    chunks: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)


def entity_id(name: str) -> str:
    """Return the id the tests give the entity called ``name``. Ids contain the raw name to test quoting."""
    return f"ent:{name}"


def relation_id(subject: str, predicate: str, obj: str) -> str:
    """Return the relation id of a fact given by entity names."""
    return content_id(entity_id(subject), predicate, entity_id(obj))


def ingested(spec: DocumentSpec, collection: str, rng: np.random.Generator) -> IngestedDocument:
    """Build the document, chunks, random vectors, entities, mentions and relations of ``spec``."""
    text = "\n".join(chunk_text for chunk_text, _ in spec.chunks)
    document = Document(doc_id=spec.doc_id, text=text, title=f"Title of {spec.doc_id}", source="hand-made")
    chunks: list[Chunk] = []
    extraction = Extraction()
    offset = 0
    for position, (chunk_text, facts) in enumerate(spec.chunks):
        start, end = offset, offset + len(chunk_text)
        offset = end + 1
        chunk_id = content_id(collection, spec.doc_id, str(start), str(end), chunk_text)
        chunks.append(Chunk(chunk_id, spec.doc_id, collection, position, start, end, chunk_text,
                            len(chunk_text.split())))
        for subject, predicate, obj in facts:
            for name in (subject, obj):
                extraction.entities.append(Entity(entity_id(name), name, "CONCEPT"))
                found = chunk_text.find(name)
                mention_start = start + found if found >= 0 else start
                extraction.mentions.append(
                    Mention(chunk_id, entity_id(name), mention_start, mention_start + len(name), name))
            extraction.relations.append(
                Relation(entity_id(subject), predicate, entity_id(obj), chunk_id, start, end, "hand"))
    embeddings = rng.standard_normal((len(chunks), DIMENSIONS)).astype(np.float32)
    return IngestedDocument(document, chunks, embeddings, extraction)


def build_store(path: Path, specs: list[DocumentSpec], collection: str = COLLECTION, seed: int = 0) -> RecordStore:
    """Write ``specs`` into a new record store at ``path``."""
    store = RecordStore(path)
    store.ensure_collection(collection)
    rng = np.random.default_rng(seed)
    store.write_documents(collection, [ingested(spec, collection, rng) for spec in specs])
    return store


def record_counts(store: RecordStore) -> dict[str, int]:
    """Return the record store's counts in the graph store's keys, with ``evidence`` added."""
    counts = store.counts()
    evidence = next(iter(store.iter_table("SELECT COUNT(*) FROM relation_evidence")))[0]
    return {"entities": counts["entities"], "relations": counts["relations"], "evidence": evidence,
            "documents": counts["documents"], "chunks": counts["chunks"], "mentions": counts["mentions"]}


DRUG_DOCUMENTS = [
    DocumentSpec("doc-1", [
        ("Aspirin inhibits COX-1.", [("Aspirin", "inhibits", "COX-1")]),
        ("COX-1 produces Prostaglandin.", [("COX-1", "produces", "Prostaglandin")]),
    ]),
    DocumentSpec("doc-2", [
        ("Ibuprofen inhibits COX-1 like Aspirin inhibits COX-1.",
         [("Ibuprofen", "inhibits", "COX-1"), ("Aspirin", "inhibits", "COX-1")]),
        ("Prostaglandin causes Inflammation.", [("Prostaglandin", "causes", "Inflammation")]),
    ]),
    DocumentSpec("doc-3", [
        ("Inflammation accompanies Fever.", [("Inflammation", "accompanies", "Fever")]),
    ]),
]


# Fixtures


@pytest.fixture()
def clean_uri(neo4j_uri: str) -> str:  # noqa: F811
    """The test server's URI, with its database emptied before the test."""
    clear_database(neo4j_uri, neo4j_auth())
    return neo4j_uri


@pytest.fixture()
def graph(clean_uri: str) -> Iterator[Neo4jGraphStore]:
    """A graph store on the emptied test database, with small batches so every sync writes several."""
    auth = neo4j_auth()
    store = Neo4jGraphStore(clean_uri, user=auth[0] if auth else None, password=auth[1] if auth else None,
                            batch_size=2)
    yield store
    store.close()


@pytest.fixture()
def drug_store(tmp_path: Path) -> Iterator[RecordStore]:
    """A record store with the three hand-made drug documents."""
    store = build_store(tmp_path / "records.sqlite", DRUG_DOCUMENTS)
    yield store
    store.close()


def open_store(uri: str, **options: object) -> Neo4jGraphStore:
    """Open a graph store on ``uri`` with the test credentials."""
    auth = neo4j_auth()
    return Neo4jGraphStore(uri, user=auth[0] if auth else None, password=auth[1] if auth else None,
                           **options)  # type: ignore[arg-type]


def duplicate_keys(graph: Neo4jGraphStore) -> dict[str, int]:
    """Return, per node label and relationship type, how many elements share a key with another."""
    queries = {
        "Entity": "MATCH (n:Entity) RETURN count(n) - count(DISTINCT n.entity_id) AS extra",
        "Chunk": "MATCH (n:Chunk) RETURN count(n) - count(DISTINCT n.chunk_id) AS extra",
        "Document": "MATCH (n:Document) RETURN count(n) - count(DISTINCT [n.collection, n.doc_id]) AS extra",
        "RELATED": "MATCH ()-[r:RELATED]->() RETURN count(r) - count(DISTINCT r.relation_id) AS extra",
        "MENTIONS": "MATCH ()-[r:MENTIONS]->() RETURN count(r) - count(DISTINCT r.mention_id) AS extra",
        "PART_OF": "MATCH (c)-[r:PART_OF]->() RETURN count(r) - count(DISTINCT c) AS extra",
    }
    return {name: graph._read(query)[0]["extra"] for name, query in queries.items()}


# Sync


def test_store_implements_protocol(graph: Neo4jGraphStore) -> None:
    assert isinstance(graph, GraphStore)


def test_sync_counts_match_record_store(graph: Neo4jGraphStore, drug_store: RecordStore) -> None:
    report = graph.sync(drug_store)

    expected = record_counts(drug_store)
    assert graph.counts() == expected
    # Hand count: 6 entities, 5 distinct facts, 6 evidence rows (Aspirin-inhibits-COX-1 twice).
    assert expected["entities"] == 6
    assert expected["relations"] == 5
    assert expected["evidence"] == 6
    added_elements = sum(expected[key] for key in ("documents", "chunks", "entities", "mentions", "relations",
                                                   "evidence"))
    assert report.added == added_elements
    assert report.removed == 0


def test_second_sync_changes_nothing(graph: Neo4jGraphStore, drug_store: RecordStore) -> None:
    graph.sync(drug_store)
    before = graph.counts()

    report = graph.sync(drug_store)

    assert report.added == 0
    assert report.removed == 0
    assert graph.counts() == before
    assert set(duplicate_keys(graph).values()) == {0}


def test_sync_keeps_evidence_lists_sorted(graph: Neo4jGraphStore, drug_store: RecordStore) -> None:
    graph.sync(drug_store)

    rows = graph._read(
        "MATCH ()-[r:RELATED {relation_id: $id}]->() RETURN r.evidence_chunk_ids AS chunks, "
        "r.evidence_extractors AS extractors", id=relation_id("Aspirin", "inhibits", "COX-1"))

    assert len(rows) == 1
    assert rows[0]["chunks"] == sorted(rows[0]["chunks"])
    assert len(rows[0]["chunks"]) == 2
    assert rows[0]["extractors"] == ["hand", "hand"]


def test_document_deletion_removes_only_its_graph(graph: Neo4jGraphStore, drug_store: RecordStore) -> None:
    graph.sync(drug_store)
    before = graph.counts()

    assert drug_store.delete_document(COLLECTION, "doc-2")
    report = graph.sync(drug_store)

    after = graph.counts()
    assert after == record_counts(drug_store)
    # doc-2 alone supported Ibuprofen, Ibuprofen-inhibits-COX-1 and Prostaglandin-causes-Inflammation.
    assert after["entities"] == before["entities"] - 1
    assert after["relations"] == before["relations"] - 2
    assert after["evidence"] == before["evidence"] - 3
    assert after["documents"] == 2
    assert report.added == 0
    assert report.removed > 0

    remaining = {fact.relation_id for fact in graph.neighbors(entity_id("COX-1"))}
    assert relation_id("Aspirin", "inhibits", "COX-1") in remaining
    assert relation_id("Ibuprofen", "inhibits", "COX-1") not in remaining
    assert graph.neighbors(entity_id("Ibuprofen")) == []
    # Inflammation stays: doc-3 still mentions it.
    assert [fact.object for fact in graph.neighbors(entity_id("Inflammation"))] == ["Fever"]
    assert graph.sync(drug_store).added == 0


def test_sync_updates_changed_document(graph: Neo4jGraphStore, drug_store: RecordStore, tmp_path: Path) -> None:
    graph.sync(drug_store)
    changed = DocumentSpec("doc-3", [("Inflammation precedes Fever.", [("Inflammation", "precedes", "Fever")])])
    drug_store.write_documents(COLLECTION, [ingested(changed, COLLECTION, np.random.default_rng(1))])

    report = graph.sync(drug_store)

    assert graph.counts() == record_counts(drug_store)
    assert report.added > 0
    assert report.removed > 0
    predicates = [fact.predicate for fact in graph.neighbors(entity_id("Fever"))]
    assert predicates == ["precedes"]


def test_write_naive_builds_same_graph(graph: Neo4jGraphStore, drug_store: RecordStore) -> None:
    triples = graph.write_naive(drug_store)

    assert triples == 5
    assert graph.counts() == record_counts(drug_store)
    assert graph.sync(drug_store).added == 0


# Graph queries


PATH_DOCUMENTS = [
    # Two paths of two hops from A to D (via B and via C), one of three hops from A to F.
    DocumentSpec("paths", [
        ("A links B.", [("A", "links", "B")]),
        ("B links D.", [("B", "links", "D")]),
        ("C links A.", [("C", "links", "A")]),
        ("C links D.", [("C", "links", "D")]),
        ("D links E.", [("D", "links", "E")]),
        ("E links F.", [("E", "links", "F")]),
        ("G links H.", [("G", "links", "H")]),
    ]),
]


@pytest.fixture()
def path_graph(graph: Neo4jGraphStore, tmp_path: Path) -> Iterator[tuple[Neo4jGraphStore, RecordStore]]:
    """The graph store synced with PATH_DOCUMENTS, and that record store."""
    store = build_store(tmp_path / "paths.sqlite", PATH_DOCUMENTS)
    graph.sync(store)
    yield graph, store
    store.close()


def test_neighbors_of_hand_made_graph(path_graph: tuple[Neo4jGraphStore, RecordStore]) -> None:
    graph, _ = path_graph

    facts = graph.neighbors(entity_id("D"))

    expected = sorted([relation_id("B", "links", "D"), relation_id("C", "links", "D"), relation_id("D", "links", "E")])
    assert [fact.relation_id for fact in facts] == expected
    by_id = {fact.relation_id: fact for fact in facts}
    fact = by_id[relation_id("D", "links", "E")]
    assert (fact.subject, fact.predicate, fact.object) == ("D", "links", "E")
    assert (fact.subject_id, fact.object_id) == (entity_id("D"), entity_id("E"))
    assert fact.chunk_id != ""
    assert fact.end > fact.start
    assert len(graph.neighbors(entity_id("D"), limit=2)) == 2
    assert graph.neighbors("ent:unknown") == []


def test_shortest_path_tie_break(path_graph: tuple[Neo4jGraphStore, RecordStore]) -> None:
    graph, _ = path_graph
    via_b = [relation_id("A", "links", "B"), relation_id("B", "links", "D")]
    via_c = [relation_id("C", "links", "A"), relation_id("C", "links", "D")]

    path = graph.shortest_path(entity_id("A"), entity_id("D"))

    assert [fact.relation_id for fact in path] == min(via_b, via_c)


def test_shortest_path_limits_and_direction(path_graph: tuple[Neo4jGraphStore, RecordStore]) -> None:
    graph, _ = path_graph

    backwards = graph.shortest_path(entity_id("F"), entity_id("C"))

    assert [fact.relation_id for fact in backwards] == [
        relation_id("E", "links", "F"), relation_id("D", "links", "E"), relation_id("C", "links", "D")]
    assert graph.shortest_path(entity_id("F"), entity_id("C"), max_hops=2) == []
    assert len(graph.shortest_path(entity_id("A"), entity_id("F"), max_hops=4)) == 4
    assert graph.shortest_path(entity_id("A"), entity_id("F"), max_hops=3) == []
    assert graph.shortest_path(entity_id("A"), entity_id("G")) == []
    assert graph.shortest_path(entity_id("A"), entity_id("A")) == []
    assert graph.shortest_path(entity_id("A"), "ent:unknown") == []
    with pytest.raises(ValueError):
        graph.shortest_path(entity_id("A"), entity_id("D"), max_hops=-1)


def test_queries_agree_with_rdf_store(path_graph: tuple[Neo4jGraphStore, RecordStore], tmp_path: Path) -> None:
    graph, store = path_graph
    rdf = RdfGraphStore(tmp_path / "graph.nt")
    rdf.sync(store)
    names = ["A", "B", "C", "D", "E", "F", "G", "H"]

    assert graph.counts()["relations"] == rdf.counts()["relations"]
    assert graph.counts()["evidence"] == rdf.counts()["evidence"]
    for name in names:
        assert graph.neighbors(entity_id(name)) == rdf.neighbors(entity_id(name)), name
    for source in names:
        for target in names:
            neo4j_path = graph.shortest_path(entity_id(source), entity_id(target))
            rdf_path = rdf.shortest_path(entity_id(source), entity_id(target))
            assert neo4j_path == rdf_path, (source, target)


# Injection


HOSTILE_TEXTS = [
    "O'Brien \"the\" `tick`",
    "}) MATCH (n) DETACH DELETE n //",
    "MATCH (n) DETACH DELETE n",
    "x` ]->(m) DETACH DELETE m WITH 1 AS `y",
    "line one\nline two\r\n\ttabbed",
    "{braces: $param} ${}",
    "\\u0027; CALL db.clearQueryCaches() //",
    "Ünïcødé ✓ 日本語",
]


def test_hostile_names_round_trip(graph: Neo4jGraphStore, tmp_path: Path) -> None:
    anchor = "Anchor"
    specs = [DocumentSpec(f"doc-{index}", [(f"{anchor} and {text}", [(anchor, text, text)])])
             for index, text in enumerate(HOSTILE_TEXTS)]
    store = build_store(tmp_path / "hostile.sqlite", specs)

    graph.sync(store)

    assert graph.counts() == record_counts(store)
    facts = graph.neighbors(entity_id(anchor))
    assert sorted((fact.predicate, fact.object, fact.object_id) for fact in facts) == sorted(
        (text, text, entity_id(text)) for text in HOSTILE_TEXTS)
    for text in HOSTILE_TEXTS:
        path = graph.shortest_path(entity_id(anchor), entity_id(text))
        assert [fact.predicate for fact in path] == [text]
    assert graph.sync(store).added == 0
    store.close()


# Connection failures


def test_closed_port_names_uri_not_password() -> None:
    uri = f"bolt://127.0.0.1:{free_port()}"
    password = "closed-port-secret"

    with pytest.raises(GraphStoreError) as raised:
        Neo4jGraphStore(uri, user="neo4j", password=password, connection_timeout=2.0)

    assert uri in str(raised.value)
    assert password not in str(raised.value)


def test_invalid_uri_raises_graph_store_error() -> None:
    with pytest.raises(GraphStoreError) as raised:
        Neo4jGraphStore("http://127.0.0.1:7474", password="invalid-uri-secret")

    assert "http://127.0.0.1:7474" in str(raised.value)
    assert "invalid-uri-secret" not in str(raised.value)


def test_uri_credentials_are_redacted() -> None:
    port = free_port()
    uri = f"bolt://neo4j:uri-secret@127.0.0.1:{port}"

    assert redact_uri(uri) == f"bolt://127.0.0.1:{port}"
    with pytest.raises(GraphStoreError) as raised:
        Neo4jGraphStore(uri, connection_timeout=2.0)

    assert "uri-secret" not in str(raised.value)


@pytest.fixture(scope="module")
def auth_server_uri() -> Iterator[tuple[str, str, str]]:
    """(URI, user, password) of a server with auth on: the NEO4J_URI one when it has a password, else a local one."""
    auth = neo4j_auth()
    if os.environ.get("NEO4J_URI") and auth and auth[1]:
        yield os.environ["NEO4J_URI"], auth[0], auth[1]
        return
    server = start_local_server(password="test-password-1")
    yield server.uri, "neo4j", "test-password-1"
    server.stop()


def test_wrong_credentials_name_uri_not_password(auth_server_uri: tuple[str, str, str]) -> None:
    uri, user, password = auth_server_uri
    wrong_password = "wrong-password-42"

    with Neo4jGraphStore(uri, user=user, password=password) as graph:
        assert "entities" in graph.counts()
    with pytest.raises(GraphStoreError) as raised:
        Neo4jGraphStore(uri, user=user, password=wrong_password)

    message = str(raised.value)
    assert uri in message
    assert "credentials" in message
    assert wrong_password not in message
    assert password not in message


def test_missing_database_raises_graph_store_error(clean_uri: str) -> None:
    with pytest.raises(GraphStoreError) as raised:
        open_store(clean_uri, database="nosuchdatabase")

    assert "does not exist" in str(raised.value)


# A Bolt COMMIT message in one chunk: chunk size 2, struct marker 0xB0, signature 0x12, end marker.
BOLT_COMMIT = b"\x00\x02\xb0\x12\x00\x00"


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of the Neo4j Bolt port that can cut connections and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.drops = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._trigger: bytes | None = None
        self._closed = False
        self.listen()

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.port}"

    def listen(self) -> None:
        """Accept connections on ``self.port`` again."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Close the listening socket, so new connections are refused."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def drop_on(self, trigger: bytes) -> None:
        """Cut every connection, without forwarding, when the client next sends data containing ``trigger``.

        An empty ``trigger`` matches the next data of any kind. The trigger fires once.
        """
        self._trigger = trigger

    def drop_connections(self) -> None:
        """Reset every relayed connection, as a network failure or a server crash would."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self.drops += 1
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.refuse()
        self.drop_connections()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed and self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                trigger = self._trigger
                if from_client and trigger is not None and trigger in data:
                    self._trigger = None
                    self.drop_connections()
                    return
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture()
def proxy(clean_uri: str) -> Iterator[TcpProxy]:
    """A relay in front of the test server (only for a server on 127.0.0.1)."""
    prefix = "bolt://127.0.0.1:"
    if not clean_uri.startswith(prefix):
        pytest.skip(f"The relay needs a bolt://127.0.0.1 server, not {clean_uri}")
    relay = TcpProxy(int(clean_uri[len(prefix):]))
    yield relay
    relay.close()


def test_dropped_connection_is_retried(
    proxy: TcpProxy, drug_store: RecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    graph = open_store(proxy.uri, batch_size=2, max_retry_seconds=20.0)

    def drop_next_message(step: str, done: int, total: int) -> None:
        if step == "write entities" and proxy.drops == 0:
            # The next message is the BEGIN of the following batch's transaction.
            proxy.drop_on(b"")

    with caplog.at_level(logging.WARNING, logger="neo4j"):
        graph.sync(drug_store, progress=drop_next_message)

    assert proxy.drops == 1
    assert "will be retried" in caplog.text
    assert graph.counts() == record_counts(drug_store)
    assert set(duplicate_keys(graph).values()) == {0}
    second = graph.sync(drug_store)
    assert (second.added, second.removed) == (0, 0)
    graph.close()


def test_connection_lost_at_commit_is_rerun(
    proxy: TcpProxy, drug_store: RecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    graph = open_store(proxy.uri, batch_size=2)

    def drop_at_commit(step: str, done: int, total: int) -> None:
        if step == "write entities" and proxy.drops == 0:
            proxy.drop_on(BOLT_COMMIT)

    with caplog.at_level(logging.WARNING, logger="expertrag"):
        graph.sync(drug_store, progress=drop_at_commit)

    assert proxy.drops == 1
    assert "Commit outcome unknown" in caplog.text
    assert graph.counts() == record_counts(drug_store)
    assert set(duplicate_keys(graph).values()) == {0}
    graph.close()


def test_unreachable_server_mid_sync_then_resync(
    proxy: TcpProxy, drug_store: RecordStore, clean_uri: str
) -> None:
    graph = open_store(proxy.uri, batch_size=2, max_retry_seconds=2.0, connection_timeout=2.0)

    def cut_off(step: str, done: int, total: int) -> None:
        if step == "write entities" and proxy.drops == 0:
            proxy.refuse()
            proxy.drop_connections()

    with pytest.raises(GraphStoreError) as raised:
        graph.sync(drug_store, progress=cut_off)
    graph.close()

    assert proxy.uri in str(raised.value)
    direct = open_store(clean_uri, batch_size=2)
    partial = direct.counts()
    expected = record_counts(drug_store)
    assert 0 < partial["entities"] < expected["entities"]
    assert partial["relations"] == 0

    proxy.listen()
    with open_store(proxy.uri, batch_size=2) as resumed:
        resumed.sync(drug_store)
    assert direct.counts() == expected
    assert set(duplicate_keys(direct).values()) == {0}
    report = direct.sync(drug_store)
    assert (report.added, report.removed) == (0, 0)
    direct.close()


# Vector search


def vector_documents(count: int) -> list[DocumentSpec]:
    """``count`` one-chunk documents without facts, for vector tests."""
    return [DocumentSpec(f"vec-{index}", [(f"Chunk number {index}.", [])]) for index in range(count)]


def test_vector_search_recall_against_exact(graph: Neo4jGraphStore, tmp_path: Path) -> None:
    store = build_store(tmp_path / "vectors.sqlite", vector_documents(300), seed=7)
    graph.sync(store)

    written = graph.write_chunk_vectors(store, COLLECTION)

    chunk_ids, matrix = store.chunk_vectors(COLLECTION)
    assert written == len(chunk_ids) == 300
    normalized = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    queries = np.random.default_rng(11).standard_normal((25, DIMENSIONS)).astype(np.float32)
    recalls = []
    for query in queries:
        cosine = normalized @ (query / np.linalg.norm(query))
        exact = {chunk_ids[i] for i in np.argsort(-cosine)[:10]}
        hits = graph.vector_search(query, k=10)
        assert len(hits) == 10
        recalls.append(len(exact & {chunk_id for chunk_id, _ in hits}) / 10)
        best_id, best_score = hits[0]
        assert best_score == pytest.approx((1 + cosine[chunk_ids.index(best_id)]) / 2, abs=1e-4)
    assert np.mean(recalls) >= 0.9
    store.close()


def test_vector_search_rejects_wrong_dimensions(graph: Neo4jGraphStore, tmp_path: Path) -> None:
    store = build_store(tmp_path / "vectors.sqlite", vector_documents(5))
    graph.sync(store)
    graph.write_chunk_vectors(store, COLLECTION)

    with pytest.raises(ValueError):
        graph.vector_search(np.ones(DIMENSIONS + 1), k=3)
    with pytest.raises(GraphStoreError):
        graph.vector_search(np.ones(DIMENSIONS), k=3, collection="other")
    store.close()


def test_vector_index_rebuilt_on_config_change(graph: Neo4jGraphStore, tmp_path: Path) -> None:
    store = build_store(tmp_path / "vectors.sqlite", vector_documents(20))
    graph.sync(store)
    graph.write_chunk_vectors(store, COLLECTION)

    graph.write_chunk_vectors(store, COLLECTION, quantization=True)

    index = graph.vector_indexes()[0]
    rows = graph._read("SHOW VECTOR INDEXES YIELD name, options WHERE name = $name RETURN options",
                       name=index.index_name)
    assert rows[0]["options"]["indexConfig"]["vector.quantization.enabled"] is True
    assert len(graph.vector_search(np.ones(DIMENSIONS), k=5)) == 5
    store.close()


def test_vectors_need_synced_chunks(graph: Neo4jGraphStore, tmp_path: Path) -> None:
    store = build_store(tmp_path / "vectors.sqlite", vector_documents(5))

    with pytest.raises(GraphStoreError) as raised:
        graph.write_chunk_vectors(store, COLLECTION)

    assert "sync" in str(raised.value)
    store.close()
