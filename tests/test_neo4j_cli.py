"""The knowledge base with a Neo4j graph store: CLI round trips and parity with the embedded RDF store."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expertrag.cli import app
from expertrag.kg_build.neo4j_server import free_port
from expertrag.kg_build.neo4j_store import Neo4jGraphStore
from expertrag.knowledge_base import KnowledgeBase
from expertrag.settings import Settings
from neo4j import GraphDatabase

DOCUMENTS = [
    ("Aspirin", "Aspirin inhibits cyclooxygenase. Bayer sold aspirin in Germany."),
    ("Penicillin", "Alexander Fleming discovered penicillin in London. Penicillin kills bacteria."),
    ("Insulin", "Frederick Banting worked in Toronto. Insulin regulates blood glucose."),
]


@pytest.fixture()
def clean_neo4j(neo4j_uri: str) -> str:
    with GraphDatabase.driver(neo4j_uri) as driver, driver.session() as session:
        session.run("MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS").consume()
    return neo4j_uri


def write_corpus(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"_id": f"d{i}", "title": t, "text": x}) for i, (t, x) in enumerate(DOCUMENTS)) + "\n")
    return path


def invoke(*arguments: str):
    return CliRunner().invoke(app, list(arguments), catch_exceptions=False)


def test_ingest_to_neo4j_twice_changes_nothing(tmp_path: Path, clean_neo4j: str) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    kb = str(tmp_path / "kb")
    first = invoke("ingest", str(corpus), "--kb", kb, "--graph-store", "neo4j", "--neo4j-uri", clean_neo4j)
    assert first.exit_code == 0, first.output
    with Neo4jGraphStore(clean_neo4j) as graph_store:
        counts = graph_store.counts()
    second = invoke("ingest", str(corpus), "--kb", kb, "--graph-store", "neo4j", "--neo4j-uri", clean_neo4j)
    assert second.exit_code == 0, second.output
    with Neo4jGraphStore(clean_neo4j) as graph_store:
        assert graph_store.counts() == counts
        report = graph_store.sync(KnowledgeBase.open(kb).store)
    assert (report.added, report.removed) == (0, 0)
    assert counts["entities"] > 0
    assert counts["relations"] > 0


def test_export_to_neo4j_twice_changes_nothing(tmp_path: Path, clean_neo4j: str) -> None:
    kb = str(tmp_path / "kb")
    assert invoke("ingest", str(write_corpus(tmp_path / "c.jsonl")), "--kb", kb).exit_code == 0
    first = invoke("export", "--kb", kb, "--to", "neo4j", clean_neo4j)
    second = invoke("export", "--kb", kb, "--to", "neo4j", clean_neo4j)
    assert first.exit_code == 0, first.output
    assert "0 removed" in first.output
    assert second.output.startswith(f"Synced {kb} into Neo4j: 0 added, 0 removed")


def test_delete_removes_document_from_neo4j(tmp_path: Path, clean_neo4j: str) -> None:
    kb = str(tmp_path / "kb")
    assert invoke("ingest", str(write_corpus(tmp_path / "c.jsonl")), "--kb", kb, "--graph-store", "neo4j",
                  "--neo4j-uri", clean_neo4j).exit_code == 0
    result = invoke("delete", "d1", "--kb", kb, "--graph-store", "neo4j", "--neo4j-uri", clean_neo4j)
    assert result.exit_code == 0, result.output
    with KnowledgeBase.open(kb) as knowledge_base, Neo4jGraphStore(clean_neo4j) as graph_store:
        totals = knowledge_base.store.counts()
        counts = graph_store.counts()
        names = [row["name"] for row in graph_store._driver.execute_query("MATCH (e:Entity) RETURN e.name AS name").records]
    assert counts["entities"] == totals["entities"]
    assert counts["relations"] == totals["relations"]
    assert "Alexander Fleming" not in names
    assert "Frederick Banting" in names


def test_unreachable_neo4j_leaves_knowledge_base_untouched(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    corpus = write_corpus(tmp_path / "c.jsonl")
    assert invoke("ingest", str(corpus), "--kb", str(kb)).exit_code == 0
    before = {p.name: p.read_bytes() for p in kb.iterdir() if p.is_file() and p.suffix != ".sqlite-wal"}

    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"_id": "new", "text": "Statins lower cholesterol."}) + "\n")
    uri = f"bolt://user:secret-password@127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["ingest", str(extra), "--kb", str(kb), "--graph-store", "neo4j", "--neo4j-uri", uri])
    assert result.exit_code == 2
    assert f"127.0.0.1:{uri.rsplit(':', 1)[1]}" in result.output
    assert "secret-password" not in result.output
    with KnowledgeBase.open(kb) as knowledge_base:
        assert knowledge_base.store.counts()["documents"] == 3
    after = {p.name: p.read_bytes() for p in kb.iterdir() if p.is_file() and p.suffix != ".sqlite-wal"}
    assert after.keys() == before.keys()
    assert after["graph.nt"] == before["graph.nt"]
    assert after["manifest.json"] == before["manifest.json"]


def test_rdflib_and_neo4j_agree_on_sample(sample_kb_path: Path, settings: Settings, clean_neo4j: str, tmp_path: Path) -> None:
    kb_path = tmp_path / "kb"
    shutil.copytree(sample_kb_path, kb_path)
    with KnowledgeBase.open(kb_path, settings) as kb, kb.connect_neo4j(clean_neo4j) as graph_store:
        kb.sync_graph_store(graph_store)
        rdf = kb.graph_store
        rdf_counts, neo4j_counts = rdf.counts(), graph_store.counts()
        assert neo4j_counts["entities"] == rdf_counts["entities"]
        assert neo4j_counts["relations"] == rdf_counts["relations"]
        assert neo4j_counts["evidence"] == rdf_counts["evidence"]

        busiest = [row[0] for row in kb.store.iter_table(
            "SELECT entity_id FROM (SELECT subject_id AS entity_id FROM relations UNION ALL "
            "SELECT object_id FROM relations) GROUP BY entity_id ORDER BY COUNT(*) DESC, entity_id LIMIT 8")]
        for entity_id in busiest:
            assert rdf.neighbors(entity_id) == graph_store.neighbors(entity_id)
        for source, target in itertools.combinations(busiest, 2):
            assert rdf.shortest_path(source, target) == graph_store.shortest_path(source, target), (source, target)
