"""The knowledge graph as RDF: a small vocabulary, an N-Triples file and an rdflib graph store.

Vocabulary (prefix ``er:`` = ``urn:expertrag:vocab:``):

* ``er:Entity`` nodes ``urn:expertrag:entity:<id>`` with ``rdfs:label`` and ``er:entityType``.
* ``er:Document`` nodes with ``er:collection``, ``er:documentId`` and ``dcterms:title``;
  ``er:Chunk`` nodes with ``er:inDocument``, ``er:start``, ``er:end`` (character offsets).
* ``<entity> er:mentionedIn <chunk>`` for every chunk that mentions an entity.
* A relation is a direct triple ``<subject> rel:<predicate> <object>`` plus an ``er:Fact``
  node (``rdf:subject``, ``rdf:predicate``, ``rdf:object``, ``er:predicateLabel``) that
  ``er:Evidence`` nodes support, each with ``er:chunk``, ``er:start``, ``er:end``, ``er:extractor``.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from expertrag.atomic import atomic_open
from expertrag.errors import GraphStoreError, InputError
from expertrag.kg_build.graph_store import SyncReport
from expertrag.kg_build.store import Fact, RecordStore

logger = logging.getLogger(__name__)

VOCAB = "urn:expertrag:vocab:"
RELATION = "urn:expertrag:relation:"
ENTITY = "urn:expertrag:entity:"
CHUNK = "urn:expertrag:chunk:"
DOCUMENT = "urn:expertrag:document:"
FACT = "urn:expertrag:fact:"
EVIDENCE = "urn:expertrag:evidence:"
RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
RDF_SUBJECT = "http://www.w3.org/1999/02/22-rdf-syntax-ns#subject"
RDF_PREDICATE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#predicate"
RDF_OBJECT = "http://www.w3.org/1999/02/22-rdf-syntax-ns#object"
RDFS_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
DCTERMS_TITLE = "http://purl.org/dc/terms/title"
XSD_INTEGER = "http://www.w3.org/2001/XMLSchema#integer"

ExportFormat = Literal["turtle", "nt", "jsonld"]
PREFIXES = {"er": VOCAB, "rel": RELATION, "entity": ENTITY, "chunk": CHUNK, "document": DOCUMENT,
            "fact": FACT, "evidence": EVIDENCE}


def _iri(value: str) -> str:
    return f"<{value}>"


def _literal(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _integer(value: int) -> str:
    return f'"{value}"^^<{XSD_INTEGER}>'


def _safe(value: str) -> str:
    """Percent-encode an id so that it is a valid IRI segment."""
    return quote(value, safe="")


def iter_ntriples(store: RecordStore) -> Any:
    """Yield the N-Triples lines of the record store's graph, streamed from SQLite."""
    a, label = _iri(RDF_TYPE), _iri(RDFS_LABEL)
    for doc_collection, doc_id, title in store.iter_table("SELECT collection, doc_id, title FROM documents"):
        node = _iri(f"{DOCUMENT}{_safe(doc_collection)}/{_safe(doc_id)}")
        yield f"{node} {a} {_iri(VOCAB + 'Document')} .\n"
        yield f"{node} {_iri(VOCAB + 'collection')} {_literal(doc_collection)} .\n"
        yield f"{node} {_iri(VOCAB + 'documentId')} {_literal(doc_id)} .\n"
        if title:
            yield f"{node} {_iri(DCTERMS_TITLE)} {_literal(title)} .\n"
    for chunk_id, doc_collection, doc_id, start, end in store.iter_table(
        'SELECT chunk_id, collection, doc_id, start, "end" FROM chunks'
    ):
        node = _iri(CHUNK + chunk_id)
        yield f"{node} {a} {_iri(VOCAB + 'Chunk')} .\n"
        yield f"{node} {_iri(VOCAB + 'inDocument')} {_iri(f'{DOCUMENT}{_safe(doc_collection)}/{_safe(doc_id)}')} .\n"
        yield f"{node} {_iri(VOCAB + 'start')} {_integer(start)} .\n"
        yield f"{node} {_iri(VOCAB + 'end')} {_integer(end)} .\n"
    for entity_id, name, entity_type in store.iter_table("SELECT entity_id, name, label FROM entities"):
        node = _iri(ENTITY + entity_id)
        yield f"{node} {a} {_iri(VOCAB + 'Entity')} .\n"
        yield f"{node} {label} {_literal(name)} .\n"
        yield f"{node} {_iri(VOCAB + 'entityType')} {_literal(entity_type)} .\n"
    for entity_id, chunk_id in store.iter_table("SELECT DISTINCT entity_id, chunk_id FROM mentions"):
        yield f"{_iri(ENTITY + entity_id)} {_iri(VOCAB + 'mentionedIn')} {_iri(CHUNK + chunk_id)} .\n"
    for relation_id, subject_id, predicate, object_id in store.iter_table(
        "SELECT relation_id, subject_id, predicate, object_id FROM relations"
    ):
        subject, obj, fact = _iri(ENTITY + subject_id), _iri(ENTITY + object_id), _iri(FACT + relation_id)
        yield f"{subject} {_iri(RELATION + _safe(predicate))} {obj} .\n"
        yield f"{fact} {a} {_iri(VOCAB + 'Fact')} .\n"
        yield f"{fact} {_iri(RDF_SUBJECT)} {subject} .\n"
        yield f"{fact} {_iri(RDF_PREDICATE)} {_iri(RELATION + _safe(predicate))} .\n"
        yield f"{fact} {_iri(RDF_OBJECT)} {obj} .\n"
        yield f"{fact} {_iri(VOCAB + 'predicateLabel')} {_literal(predicate)} .\n"
    for relation_id, chunk_id, start, end, extractor in store.iter_table(
        'SELECT relation_id, chunk_id, start, "end", extractor FROM relation_evidence'
    ):
        node = _iri(f"{EVIDENCE}{relation_id}/{chunk_id}/{start}")
        yield f"{node} {a} {_iri(VOCAB + 'Evidence')} .\n"
        yield f"{node} {_iri(VOCAB + 'supports')} {_iri(FACT + relation_id)} .\n"
        yield f"{node} {_iri(VOCAB + 'chunk')} {_iri(CHUNK + chunk_id)} .\n"
        yield f"{node} {_iri(VOCAB + 'start')} {_integer(start)} .\n"
        yield f"{node} {_iri(VOCAB + 'end')} {_integer(end)} .\n"
        yield f"{node} {_iri(VOCAB + 'extractor')} {_literal(extractor)} .\n"


class RdfGraphStore:
    """The embedded graph store: an N-Triples file, loaded into rdflib on first query."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._graph: Any = None

    def sync(self, store: RecordStore) -> SyncReport:
        """Rewrite the N-Triples file from the record store, atomically; report changed triples."""
        started = time.perf_counter()
        before = self._line_hashes()
        after: set[int] = set()
        with atomic_open(self.path, "w") as out:
            for line in iter_ntriples(store):
                after.add(zlib.crc32(line.encode()) ^ (len(line) << 32))
                out.write(line)
        self._graph = None
        report = SyncReport(len(after - before), len(before - after), time.perf_counter() - started)
        logger.info("Wrote %d RDF triples to %s in %.1f s", len(after), self.path, report.seconds)
        return report

    def _line_hashes(self) -> set[int]:
        if not self.path.exists():
            return set()
        with self.path.open(encoding="utf-8") as handle:
            return {zlib.crc32(line.encode()) ^ (len(line) << 32) for line in handle}

    def graph(self) -> Any:
        """Return the rdflib graph, parsing the N-Triples file once."""
        if self._graph is None:
            import rdflib

            graph = rdflib.Graph()
            for prefix, namespace in PREFIXES.items():
                graph.bind(prefix, rdflib.Namespace(namespace))
            if self.path.exists():
                try:
                    graph.parse(str(self.path), format="nt")
                except Exception as error:  # rdflib raises parser-specific exception types
                    raise GraphStoreError(f"Cannot parse the RDF graph {self.path}: {error}") from None
            self._graph = graph
        return self._graph

    def export(self, out: Path, export_format: ExportFormat) -> int:
        """Serialize the graph as Turtle, N-Triples or JSON-LD into ``out``; return the triple count."""
        formats = {"turtle": "turtle", "nt": "nt", "jsonld": "json-ld"}
        if export_format not in formats:
            raise InputError(f"Unknown export format {export_format!r}: use turtle, nt or jsonld")
        graph = self.graph()
        with atomic_open(out, "wb") as handle:
            graph.serialize(destination=handle, format=formats[export_format], encoding="utf-8")
        return len(graph)

    def sparql(self, query: str) -> list[dict[str, str]]:
        """Run a SPARQL SELECT or ASK query; return rows as {variable: value}."""
        from pyparsing import ParseException

        try:
            result = self.graph().query(query, initNs=PREFIXES)
        except ParseException as error:
            raise InputError(f"Invalid SPARQL query: {error}") from None
        if result.type == "ASK":
            return [{"ask": str(bool(result.askAnswer)).lower()}]
        if result.type != "SELECT":
            raise InputError(f"Only SELECT and ASK queries are supported, not {result.type}")
        names = [str(v) for v in result.vars]
        return [{name: ("" if value is None else str(value)) for name, value in zip(names, row)} for row in result]

    def counts(self) -> dict[str, int]:
        """Return the number of entities, distinct relations and evidence links in the graph."""
        rows = self.sparql(
            "SELECT (COUNT(DISTINCT ?e) AS ?n) WHERE { ?e a er:Entity }"
        ) + self.sparql("SELECT (COUNT(DISTINCT ?f) AS ?n) WHERE { ?f a er:Fact }") + self.sparql(
            "SELECT (COUNT(DISTINCT ?v) AS ?n) WHERE { ?v a er:Evidence }"
        )
        return {"entities": int(rows[0]["n"]), "relations": int(rows[1]["n"]), "evidence": int(rows[2]["n"])}

    def _facts(self, fact_nodes: list[Any]) -> list[Fact]:
        import rdflib

        graph = self.graph()
        v = rdflib.Namespace(VOCAB)
        facts = []
        for node in fact_nodes:
            subject = graph.value(node, rdflib.RDF.subject)
            obj = graph.value(node, rdflib.RDF.object)
            evidence = sorted(graph.subjects(v.supports, node),
                              key=lambda e: (str(graph.value(e, v.chunk)), int(graph.value(e, v.start))))
            chunk = graph.value(evidence[0], v.chunk) if evidence else None
            facts.append(Fact(
                relation_id=str(node)[len(FACT):],
                subject_id=str(subject)[len(ENTITY):],
                subject=str(graph.value(subject, rdflib.RDFS.label)),
                predicate=str(graph.value(node, v.predicateLabel)),
                object_id=str(obj)[len(ENTITY):],
                object=str(graph.value(obj, rdflib.RDFS.label)),
                chunk_id=str(chunk)[len(CHUNK):] if chunk else "",
                start=int(graph.value(evidence[0], v.start)) if evidence else 0,
                end=int(graph.value(evidence[0], v.end)) if evidence else 0,
            ))
        return facts

    def _fact_edges(self, entity: Any) -> list[tuple[str, Any, Any]]:
        """(relation id, fact node, other entity) for every fact that touches ``entity``."""
        import rdflib

        graph = self.graph()
        edges = []
        for fact in graph.subjects(rdflib.RDF.subject, entity):
            edges.append((str(fact)[len(FACT):], fact, graph.value(fact, rdflib.RDF.object)))
        for fact in graph.subjects(rdflib.RDF.object, entity):
            edges.append((str(fact)[len(FACT):], fact, graph.value(fact, rdflib.RDF.subject)))
        return sorted(edges, key=lambda edge: edge[0])

    def neighbors(self, entity_id: str, limit: int = 50) -> list[Fact]:
        """Return facts whose subject or object is ``entity_id``, ordered by relation id."""
        import rdflib

        edges = self._fact_edges(rdflib.URIRef(ENTITY + entity_id))
        unique = list(dict.fromkeys(fact for _, fact, _ in edges))
        return self._facts(unique[:limit])

    def shortest_path(self, source_id: str, target_id: str, max_hops: int = 4) -> list[Fact]:
        """Return the facts of one shortest undirected path; ties go to the smaller relation ids."""
        import rdflib

        source, target = rdflib.URIRef(ENTITY + source_id), rdflib.URIRef(ENTITY + target_id)
        if source == target:
            return []
        previous: dict[Any, tuple[Any, Any]] = {source: (None, None)}
        frontier = deque([(source, 0)])
        while frontier:
            node, depth = frontier.popleft()
            if depth >= max_hops:
                continue
            for _, fact, other in self._fact_edges(node):
                if other in previous:
                    continue
                previous[other] = (node, fact)
                if other == target:
                    path = []
                    step = other
                    while previous[step][0] is not None:
                        step, fact_node = previous[step]
                        path.append(fact_node)
                    return self._facts(list(reversed(path)))
                frontier.append((other, depth + 1))
        return []

    def close(self) -> None:
        """Drop the parsed graph."""
        self._graph = None
