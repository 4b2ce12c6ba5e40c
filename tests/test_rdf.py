"""The RDF graph store: export formats, SPARQL, counts and paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rdflib

from expertrag.errors import InputError
from expertrag.kg_build.rdf import RdfGraphStore
from expertrag.kg_build.store import IngestedDocument, RecordStore
from expertrag.knowledge_base import KnowledgeBase
from expertrag.records import Chunk, Document, Entity, Extraction, Mention, Relation


def hand_made_store(path: Path) -> RecordStore:
    """A graph a-b-c-d in a line plus a shortcut a-e-d, with awkward names."""
    store = RecordStore(path)
    names = {"a": 'Alpha "quoted"', "b": "Beta\nnewline", "c": "Gamma {braces}", "d": "Delta `tick`", "e": "Epsilon"}
    entities = {key: Entity(f"e{key}", name, "CONCEPT") for key, name in names.items()}
    text = "Alpha Beta Gamma Delta Epsilon."
    chunk = Chunk("k1", "doc1", "c", 0, 0, len(text), text, 8)
    relations = [
        Relation("ea", "links", "eb", "k1", 0, 10, "test"),
        Relation("eb", "links", "ec", "k1", 6, 16, "test"),
        Relation("ec", "links", "ed", "k1", 11, 22, "test"),
        Relation("ea", "near", "ee", "k1", 0, 30, "test"),
        Relation("ee", "near", "ed", "k1", 17, 30, "test"),
    ]
    mentions = [Mention("k1", e.entity_id, 0, 5, "Alpha") for e in entities.values()]
    extraction = Extraction(list(entities.values()), mentions, relations)
    store.ensure_collection("c")
    store.write_documents("c", [IngestedDocument(Document("doc1", text, "T"), [chunk], np.zeros((1, 4), np.float32), extraction)])
    return store


def test_counts_match_record_store(tmp_path: Path) -> None:
    store = hand_made_store(tmp_path / "r.sqlite")
    graph_store = RdfGraphStore(tmp_path / "g.nt")
    graph_store.sync(store)
    assert graph_store.counts() == {"entities": 5, "relations": 5, "evidence": 5}


def test_second_sync_changes_nothing(tmp_path: Path) -> None:
    store = hand_made_store(tmp_path / "r.sqlite")
    graph_store = RdfGraphStore(tmp_path / "g.nt")
    first = graph_store.sync(store)
    second = graph_store.sync(store)
    assert first.added > 0
    assert (second.added, second.removed) == (0, 0)


def test_names_round_trip_unchanged(tmp_path: Path) -> None:
    store = hand_made_store(tmp_path / "r.sqlite")
    graph_store = RdfGraphStore(tmp_path / "g.nt")
    graph_store.sync(store)
    labels = {row["n"] for row in graph_store.sparql("SELECT ?n WHERE { ?e a er:Entity ; rdfs:label ?n }")}
    assert labels == {'Alpha "quoted"', "Beta\nnewline", "Gamma {braces}", "Delta `tick`", "Epsilon"}


def test_shortest_path_prefers_fewer_hops(tmp_path: Path) -> None:
    graph_store = RdfGraphStore(tmp_path / "g.nt")
    graph_store.sync(hand_made_store(tmp_path / "r.sqlite"))
    path = graph_store.shortest_path("ea", "ed")
    assert [(f.subject_id, f.predicate, f.object_id) for f in path] == [("ea", "near", "ee"), ("ee", "near", "ed")]
    assert all(f.chunk_id == "k1" for f in path)
    assert graph_store.shortest_path("ea", "ed", max_hops=1) == []
    reverse = graph_store.shortest_path("ed", "eb")
    assert [(f.subject_id, f.object_id) for f in reverse] == [("ec", "ed"), ("eb", "ec")]


def test_neighbors(tmp_path: Path) -> None:
    graph_store = RdfGraphStore(tmp_path / "g.nt")
    graph_store.sync(hand_made_store(tmp_path / "r.sqlite"))
    facts = graph_store.neighbors("eb")
    assert {(f.subject, f.object) for f in facts} == {('Alpha "quoted"', "Beta\nnewline"), ("Beta\nnewline", "Gamma {braces}")}


@pytest.mark.parametrize("export_format", ["turtle", "nt", "jsonld"])
def test_export_parses_back(sample_kb: KnowledgeBase, tmp_path: Path, export_format: str) -> None:
    out = tmp_path / f"graph.{export_format}"
    triples = sample_kb.export(out, export_format)  # type: ignore[arg-type]
    parsed = rdflib.Graph().parse(str(out), format={"turtle": "turtle", "nt": "nt", "jsonld": "json-ld"}[export_format])
    assert len(parsed) == triples
    assert triples > 1000


def test_sparql_over_sample(sample_kb: KnowledgeBase) -> None:
    rows = sample_kb.sparql("SELECT (COUNT(?d) AS ?n) WHERE { ?d a er:Document }")
    assert int(rows[0]["n"]) == 100
    with pytest.raises(InputError, match="Invalid SPARQL"):
        sample_kb.sparql("SELECT WHERE {")


def test_sample_graph_counts_match_records(sample_kb: KnowledgeBase) -> None:
    totals = sample_kb.store.counts()
    counts = sample_kb.graph_store.counts()
    assert counts["entities"] == totals["entities"]
    assert counts["relations"] == totals["relations"]
