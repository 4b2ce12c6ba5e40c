"""Ingestion into a knowledge base: idempotence, resumption, bad input, deletion, collections."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from expertrag.errors import CorpusFormatError, EmptyKnowledgeBaseError, KnowledgeBaseNotFoundError
from expertrag.knowledge_base import KnowledgeBase
from expertrag.settings import Settings

TOPICS = [
    ("Aspirin", "Aspirin inhibits cyclooxygenase enzymes. Bayer sold aspirin in Germany."),
    ("Insulin", "Insulin regulates blood glucose. Frederick Banting discovered insulin in Toronto."),
    ("Penicillin", "Alexander Fleming discovered penicillin in London. Penicillin kills bacteria."),
    ("Metformin", "Metformin lowers blood glucose in type 2 diabetes. Metformin activates AMPK."),
    ("Statins", "Statins inhibit HMG-CoA reductase. Statins reduce cholesterol in the liver."),
    ("Warfarin", "Warfarin blocks vitamin K recycling. Warfarin prevents blood clots."),
]


def write_corpus(path: Path, topics=TOPICS, extra_lines: list[str] | None = None) -> Path:
    lines = [json.dumps({"_id": f"doc{i}", "title": t, "text": text}) for i, (t, text) in enumerate(topics)]
    path.write_text("\n".join(lines + (extra_lines or [])) + "\n", encoding="utf-8")
    return path


def table_counts(kb_path: Path) -> dict[str, int]:
    with sqlite3.connect(kb_path / "records.sqlite") as db:
        tables = ["documents", "chunks", "entities", "mentions", "relations", "relation_evidence"]
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


@pytest.fixture()
def small_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ingest_batch_documents": 2})


def test_ingest_then_reingest_adds_nothing(tmp_path: Path, small_settings: Settings) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        first = kb.ingest(corpus, "drugs")
        counts = table_counts(kb.path)
        second = kb.ingest(corpus, "drugs")
    assert first.documents_added == 6
    assert counts["documents"] == 6
    assert counts["chunks"] >= 6
    assert counts["relations"] > 0
    assert second.documents_added == 0
    assert second.documents_unchanged == 6
    assert table_counts(tmp_path / "kb") == counts


def test_changed_document_is_replaced(tmp_path: Path, small_settings: Settings) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        kb.ingest(corpus, "drugs")
        changed = [("Aspirin", "Aspirin reduces fever in children.")] + TOPICS[1:]
        report = kb.ingest(write_corpus(tmp_path / "c2.jsonl", changed), "drugs")
        text = kb.store.document_text("drugs", "doc0")
        hits = kb.retrieve("cyclooxygenase", "drugs", k=3, retriever="bm25")
    assert report.documents_added == 1
    assert report.documents_unchanged == 5
    assert text == "Aspirin\n\nAspirin reduces fever in children."
    assert all(hit.doc_id != "doc0" for hit in hits), "the old text must be gone from the index"


def test_bad_record_leaves_knowledge_base_unchanged(tmp_path: Path, small_settings: Settings) -> None:
    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        kb.ingest(write_corpus(tmp_path / "c.jsonl", TOPICS[:2]), "drugs")
    before = table_counts(tmp_path / "kb")
    graph_before = (tmp_path / "kb" / "graph.nt").read_bytes()

    bad = write_corpus(tmp_path / "bad.jsonl", TOPICS, extra_lines=['{"_id": "x", "text": '])
    with KnowledgeBase.open(tmp_path / "kb", small_settings) as kb:
        with pytest.raises(CorpusFormatError) as caught:
            kb.ingest(bad, "drugs")
    assert caught.value.line == 7
    assert str(bad) in str(caught.value)
    assert table_counts(tmp_path / "kb") == before
    assert (tmp_path / "kb" / "graph.nt").read_bytes() == graph_before


def test_skip_policy_ingests_good_records(tmp_path: Path, small_settings: Settings) -> None:
    bad = write_corpus(tmp_path / "bad.jsonl", TOPICS[:3], extra_lines=["not json", json.dumps({"_id": "e", "text": ""})])
    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        report = kb.ingest(bad, "drugs", on_error="skip")
        runs = kb.store.runs()
    assert report.documents_added == 3
    assert report.documents_skipped == 2
    assert "line 4" in report.errors[0]
    assert runs[0]["status"] == "completed"
    assert runs[0]["documents_skipped"] == 2


def test_interrupted_ingest_resumes(tmp_path: Path, small_settings: Settings) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")

    def interrupt_after_first_batch(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        with pytest.raises(KeyboardInterrupt):
            kb.ingest(corpus, "drugs", progress=interrupt_after_first_batch)
        assert kb.store.counts("drugs")["documents"] == 2
        assert kb.store.runs()[0]["status"] == "interrupted"
        resumed = kb.ingest(corpus, "drugs")
    assert resumed.documents_unchanged == 2
    assert resumed.documents_added == 4

    with KnowledgeBase.open(tmp_path / "clean", small_settings, create=True) as clean:
        clean.ingest(corpus, "drugs")
    assert table_counts(tmp_path / "kb") == table_counts(tmp_path / "clean")


def test_delete_document_removes_what_only_it_supported(tmp_path: Path, small_settings: Settings) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        kb.ingest(corpus, "drugs")
        chunk_ids = [row[0] for row in kb.store.iter_table("SELECT chunk_id FROM chunks WHERE doc_id = 'doc2'")]
        fleming = kb.store.find_entities("Alexander Fleming")
        insulin = kb.store.find_entities("insulin")
        assert fleming and insulin
        assert kb.delete_document("drugs", "doc2") is True
        assert kb.delete_document("drugs", "doc2") is False
        assert kb.store.get_chunks(chunk_ids) == {}
        assert kb.store.find_entities("Alexander Fleming") == []
        assert kb.store.find_entities("insulin") == insulin
        hits = kb.retrieve("penicillin bacteria", "drugs", k=10, retriever="dense")
        orphans = list(kb.store.iter_table(
            "SELECT relation_id FROM relations WHERE relation_id NOT IN (SELECT relation_id FROM relation_evidence)"))
    assert all(hit.doc_id != "doc2" for hit in hits)
    assert orphans == []
    assert "Fleming" not in (tmp_path / "kb" / "graph.nt").read_text(encoding="utf-8")


def test_collections_are_separate(tmp_path: Path, small_settings: Settings) -> None:
    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        kb.ingest(write_corpus(tmp_path / "a.jsonl", TOPICS[:3]), "first")
        kb.ingest(write_corpus(tmp_path / "b.jsonl", TOPICS[3:]), "second")
        first_hits = kb.retrieve("glucose", "first", k=5, retriever="bm25")
        all_hits = kb.retrieve("glucose", None, k=5, retriever="bm25")
        stats = kb.stats()
    assert {h.collection for h in first_hits} == {"first"}
    assert {h.collection for h in all_hits} == {"first", "second"}
    assert stats["collections"]["first"]["documents"] == 3
    assert stats["collections"]["second"]["documents"] == 3


def test_missing_and_empty_knowledge_base(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(KnowledgeBaseNotFoundError, match="expertrag ingest"):
        KnowledgeBase.open(tmp_path / "missing", settings)
    with KnowledgeBase.open(tmp_path / "empty", settings, create=True) as kb:
        with pytest.raises(EmptyKnowledgeBaseError, match="ingest"):
            kb.retrieve("anything")


def test_stale_index_is_rebuilt_after_crash(tmp_path: Path, small_settings: Settings) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    with KnowledgeBase.open(tmp_path / "kb", small_settings, create=True) as kb:
        kb.ingest(corpus, "drugs")
    index_file = tmp_path / "kb" / "indexes" / "drugs.faiss"
    index_file.write_bytes(b"half-written garbage")
    (tmp_path / "kb" / "indexes" / "drugs.faiss").unlink()
    with KnowledgeBase.open(tmp_path / "kb", small_settings) as kb:
        hits = kb.retrieve("penicillin", "drugs", k=1, retriever="dense")
    assert hits[0].doc_id == "doc2"
    assert index_file.exists()
