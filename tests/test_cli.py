"""Tests of the ``expertrag`` command line on tiny generated corpora.

Most commands run in-process through Typer's CliRunner, so the encoder and the spaCy
pipeline load once per session. One test runs the installed console script itself.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rdflib
from click.testing import Result
from typer.testing import CliRunner

from expertrag.cli import app
from expertrag.knowledge_base import KnowledgeBase

DOCUMENTS = [
    {"_id": "d1", "title": "Aspirin and platelets", "text": "Aspirin inhibits cyclooxygenase in human platelets. Bayer introduced aspirin in Germany in 1899."},
    {"_id": "d2", "title": "Metformin", "text": "Metformin lowers blood glucose in patients with type 2 diabetes. The drug activates AMPK in the liver."},
    {"_id": "d3", "title": "Statins", "text": "Statins reduce LDL cholesterol. Pfizer sold atorvastatin in the United States under the name Lipitor."},
    {"_id": "d4", "title": "Insulin", "text": "Frederick Banting discovered insulin at the University of Toronto in 1921. Insulin regulates glucose uptake."},
    {"_id": "d5", "title": "Penicillin", "text": "Alexander Fleming discovered penicillin in London in 1928. Penicillin kills Staphylococcus bacteria."},
]
# New documents with invalid JSON on line 3, so a partial write would change the counts.
MALFORMED_LINES = [
    json.dumps({"_id": "e1", "text": "Ibuprofen relieves pain in adults with arthritis."}),
    json.dumps({"_id": "e2", "text": "Paracetamol reduces fever in children."}),
    '{"_id": "e3", "text": "Warfarin prevents blood clots',
    json.dumps({"_id": "e4", "text": "Heparin acts on antithrombin in the blood."}),
    json.dumps({"_id": "e5", "text": "Lithium stabilizes mood in bipolar disorder."}),
]
RDFLIB_FORMATS = {"turtle": "turtle", "nt": "nt", "jsonld": "json-ld"}

RUNNER = CliRunner()


def invoke(*args: object) -> Result:
    """Run the CLI in-process with ``args``, keeping stdout and stderr apart."""
    return RUNNER.invoke(app, [str(arg) for arg in args])


def parse_json_output(result: Result) -> Any:
    """Return the JSON that a ``--json`` command printed, failing with its output when it exited non-zero."""
    assert result.exit_code == 0, f"exit code {result.exit_code}; stderr: {result.stderr}; exception: {result.exception!r}"
    return json.loads(result.stdout)


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def restore_package_logger() -> Iterator[None]:
    """Undo ``configure_logging``, which the commands call, so other test modules keep their log capture."""
    package_logger = logging.getLogger("expertrag")
    saved = (package_logger.handlers[:], package_logger.level, package_logger.propagate)
    yield
    package_logger.handlers[:], package_logger.level, package_logger.propagate = saved


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSON Lines corpus of five short documents."""
    folder = tmp_path_factory.mktemp("cli_corpus")
    return write_jsonl(folder / "corpus.jsonl", [json.dumps(document) for document in DOCUMENTS])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> tuple[Path, dict[str, Any]]:
    """A knowledge base with ``corpus_file`` ingested by ``expertrag ingest --json``, and the printed report."""
    kb_path = tmp_path_factory.mktemp("cli_kb") / "kb"
    report = parse_json_output(invoke("ingest", corpus_file, "--kb", kb_path, "--json"))
    return kb_path, report


@pytest.fixture()
def kb_copy(ingested: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    """A private copy of the ingested knowledge base for tests that ingest more into it."""
    copy = tmp_path / "kb"
    shutil.copytree(ingested[0], copy)
    return copy


def read_stats(kb_path: Path) -> dict[str, Any]:
    with KnowledgeBase.open(kb_path) as kb:
        return kb.stats()


# ingest


def test_ingest_json_reports_counts(ingested: tuple[Path, dict[str, Any]], corpus_file: Path) -> None:
    kb_path, report = ingested
    totals = read_stats(kb_path)["totals"]

    assert report["kb"] == str(kb_path)
    assert report["collection"] == "default"
    assert report["source"] == str(corpus_file)
    assert report["documents_seen"] == len(DOCUMENTS)
    assert report["documents_added"] == len(DOCUMENTS)
    assert report["documents_unchanged"] == 0
    assert report["documents_skipped"] == 0
    assert report["errors"] == []
    assert report["chunks_added"] >= len(DOCUMENTS)
    assert totals["documents"] == len(DOCUMENTS)
    assert totals["chunks"] == report["chunks_added"]
    assert totals["relations"] > 0


def test_ingest_again_adds_nothing(kb_copy: Path, corpus_file: Path) -> None:
    before = read_stats(kb_copy)["totals"]

    report = parse_json_output(invoke("ingest", corpus_file, "--kb", kb_copy, "--json"))

    assert report["documents_added"] == 0
    assert report["documents_unchanged"] == len(DOCUMENTS)
    assert report["chunks_added"] == 0
    assert read_stats(kb_copy)["totals"] == before


def test_ingest_malformed_line_fails(kb_copy: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "broken.jsonl", MALFORMED_LINES)
    before = read_stats(kb_copy)

    result = invoke("ingest", corpus, "--kb", kb_copy)

    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"line 3 of {corpus}" in result.stderr
    assert "Invalid JSON" in result.stderr
    assert read_stats(kb_copy) == before


def test_ingest_skip_counts_malformed_line(kb_copy: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "broken.jsonl", MALFORMED_LINES)

    report = parse_json_output(invoke("ingest", corpus, "--kb", kb_copy, "--on-error", "skip", "--json"))

    assert report["documents_skipped"] == 1
    assert report["documents_added"] == len(MALFORMED_LINES) - 1
    assert len(report["errors"]) == 1
    assert f"line 3 of {corpus}" in report["errors"][0]
    assert read_stats(kb_copy)["totals"]["documents"] == len(DOCUMENTS) + len(MALFORMED_LINES) - 1


def test_ingest_invalid_on_error_fails(tmp_path: Path, corpus_file: Path) -> None:
    result = invoke("ingest", corpus_file, "--kb", tmp_path / "kb", "--on-error", "ignore")

    assert result.exit_code == 2
    assert "'ignore'" in result.stderr


# query and retrieve


@pytest.mark.parametrize("command", ["query", "retrieve"])
def test_missing_kb_exits_2(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    result = invoke(command, "What lowers blood glucose?", "--kb", missing)

    assert result.exit_code == 2
    assert str(missing) in result.stderr
    assert "expertrag ingest" in result.stderr
    assert not missing.exists()


def test_console_script_missing_kb_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    script = Path(sys.executable).with_name("expertrag")
    assert script.is_file(), f"console script {script} is not installed; run `pip install -e .`"

    completed = subprocess.run(
        [str(script), "retrieve", "glucose", "--kb", str(missing)], capture_output=True, text=True, timeout=300
    )

    assert completed.returncode == 2
    assert "expertrag ingest" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_retrieve_json_finds_document(ingested: tuple[Path, dict[str, Any]]) -> None:
    hits = parse_json_output(invoke("retrieve", "aspirin cyclooxygenase platelets", "--kb", ingested[0], "--k", 3, "--json"))

    assert len(hits) == 3
    assert hits[0]["doc_id"] == "d1"
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)


# export, sparql and stats


@pytest.mark.parametrize("export_format", sorted(RDFLIB_FORMATS))
def test_export_parses_back(ingested: tuple[Path, dict[str, Any]], tmp_path: Path, export_format: str) -> None:
    kb_path = ingested[0]
    out = tmp_path / f"graph.{export_format}"
    stored = rdflib.Graph().parse(str(kb_path / "graph.nt"), format="nt")

    result = invoke("export", "--kb", kb_path, "--format", export_format, "--out", out)

    assert result.exit_code == 0, result.stderr
    assert len(stored) > 0
    assert result.stdout.strip() == f"Wrote {len(stored)} triples to {out}"
    exported = rdflib.Graph().parse(str(out), format=RDFLIB_FORMATS[export_format])
    assert len(exported) == len(stored)


def test_export_unknown_format_fails(ingested: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "graph.xml"

    result = invoke("export", "--kb", ingested[0], "--format", "rdfxml", "--out", out)

    assert result.exit_code == 2
    assert "'rdfxml'" in result.stderr
    assert not out.exists()


def test_sparql_select_returns_rows(ingested: tuple[Path, dict[str, Any]]) -> None:
    kb_path = ingested[0]
    query = "SELECT ?entity ?name WHERE { ?entity a er:Entity ; rdfs:label ?name }"

    rows = parse_json_output(invoke("sparql", query, "--kb", kb_path, "--json"))

    assert len(rows) == read_stats(kb_path)["totals"]["entities"]
    assert all(set(row) == {"entity", "name"} for row in rows)
    assert all(row["entity"].startswith("urn:expertrag:entity:") for row in rows)
    assert "Alexander Fleming" in {row["name"] for row in rows}


def test_sparql_ask_and_text_output(ingested: tuple[Path, dict[str, Any]]) -> None:
    kb_path = ingested[0]

    ask = parse_json_output(invoke("sparql", "ASK { ?fact a er:Fact }", "--kb", kb_path, "--json"))
    text = invoke("sparql", "SELECT ?entity ?type WHERE { ?entity a er:Entity ; er:entityType ?type }", "--kb", kb_path)

    assert ask == [{"ask": "true"}]
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == read_stats(kb_path)["totals"]["entities"]
    assert all(line.startswith("urn:expertrag:entity:") and line.count("\t") == 1 for line in lines)


def test_sparql_invalid_query_fails(ingested: tuple[Path, dict[str, Any]]) -> None:
    result = invoke("sparql", "SELECT WHERE {", "--kb", ingested[0])

    assert result.exit_code == 2
    assert "Invalid SPARQL" in result.stderr


def test_stats_json_matches_kb(ingested: tuple[Path, dict[str, Any]]) -> None:
    kb_path, report = ingested

    stats = parse_json_output(invoke("stats", "--kb", kb_path, "--json"))

    assert stats == read_stats(kb_path)
    assert stats["collections"] == {"default": {"documents": len(DOCUMENTS), "chunks": report["chunks_added"]}}
    assert stats["totals"]["documents"] == len(DOCUMENTS)
