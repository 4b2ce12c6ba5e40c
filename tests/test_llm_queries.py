"""Tests of LLM-written pseudo-queries, with the real local GGUF model.

Each question costs about 2 s on two CPU cores, so the tests ask for a handful.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from expertrag.rag.llm import LlamaCppBackend
from expertrag.rag.model_files import DEFAULT_GGUF, resolve_gguf
from expertrag.records import Document
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import pseudo_query_training_data
from expertrag.retrievers.experts.data import collection_training_data, document_text
from expertrag.retrievers.experts.llm_queries import (
    cache_file,
    clean_question,
    copies_document,
    llm_questions,
    read_cached,
    text_hash,
)
from expertrag.settings import Settings

TOPICS = [
    ("d1", "Heat transfer in hypersonic flow",
     "Measurements of heat transfer to a cylinder in a hypersonic air stream at Mach 8 show that the rate falls "
     "as the yaw angle grows."),
    ("d2", "Indexing library catalogues",
     "A study of how librarians assign subject headings to books finds that two indexers agree on fewer than "
     "half of the headings."),
    ("d3", "Vitamin D and bone fractures",
     "In a trial of 2,000 older adults, a daily vitamin D supplement did not lower the number of hip fractures "
     "over five years."),
]
# As the corpus loaders do, a document's text is its title and body joined by a blank line.
DOCUMENTS = [Document(doc_id=doc_id, title=title, text=f"{title}\n\n{body}") for doc_id, title, body in TOPICS]


class CountingBackend:
    """A backend wrapper that counts completion requests."""

    def __init__(self, inner: LlamaCppBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def complete(self, messages, **kwargs) -> str:  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner.complete(messages, **kwargs)


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppBackend]:
    missing = [name for name in DEFAULT_GGUF.part_modules if importlib.util.find_spec(name) is None]
    if missing or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the default GGUF parts or llama-cpp-python are not installed")
    backend = LlamaCppBackend(Settings(llm_context_tokens=2048), model_path=resolve_gguf(Settings()))
    yield backend
    backend.close()


@pytest.mark.parametrize(("reply", "expected"), [
    ('"What limits heat transfer at high yaw?"', "What limits heat transfer at high yaw?"),
    ("Question: how do indexers agree?\nThe document says...", "how do indexers agree?"),
    ("\n\n  Q: does vitamin D   prevent fractures?  ", "does vitamin D prevent fractures?"),
    ("Fractures.", None),
    ("", None),
])
def test_clean_question(reply: str, expected: str | None) -> None:
    assert clean_question(reply) == expected


def test_clean_question_cuts_long_replies() -> None:
    question = clean_question("why " * 50)
    assert question is not None and len(question.split()) == 32


def test_copied_reply_detected() -> None:
    text = document_text(DOCUMENTS[1])
    assert copies_document("A study of how librarians assign subject headings to books finds that two", text)
    assert not copies_document("How often do two indexers agree on the subject headings of a book?", text)
    # the run is counted in words of ten, with case and spacing ignored
    assert copies_document("INDEXING   library catalogues A study of how librarians assign subject", text)
    assert not copies_document("library catalogues A study of how librarians assign", text)


def test_questions_are_cached_and_resumed(tmp_path: Path, llama: LlamaCppBackend) -> None:
    texts = [document_text(d) for d in DOCUMENTS]
    counting = CountingBackend(llama)
    first = llm_questions("toy", DOCUMENTS[:2], texts[:2], counting, 2, 0, tmp_path)
    assert counting.calls == 2
    # a reply that echoes the document is dropped, so a question per document is not guaranteed
    assert first
    assert set(first) <= {"d1", "d2"}
    for doc_id, question in first.items():
        source = texts[int(doc_id[1:]) - 1]
        assert len(question.split()) >= 3
        assert not copies_document(question, source)
        # the question is about its document: it shares a content word with it
        assert any(word.strip("?.,").lower() in source.lower() for word in question.split() if len(word) > 5), question

    # mistyped lines and a torn last line (an interrupted run) are skipped, and a rerun
    # requests only the missing question
    path = cache_file(tmp_path, "toy", llama.name)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"doc": 5, "text_sha256": "x", "question": 7}\n["d3"]\n{"doc": "d3", "quest')
    assert {doc_id for doc_id, _ in read_cached(path)} == {"d1", "d2"}
    again = llm_questions("toy", DOCUMENTS, texts, counting, 3, 0, tmp_path)
    assert counting.calls == 3
    assert {k: again[k] for k in first} == first
    lines = path.read_text().splitlines()
    assert [json.loads(line)["doc"] for line in lines[:2]] == ["d1", "d2"]
    # the new line starts after the torn one instead of continuing it
    assert json.loads(lines[-1])["doc"] == "d3"
    assert lines[-2] == '{"doc": "d3", "quest'


def test_cached_question_needs_same_text(tmp_path: Path, llama: LlamaCppBackend) -> None:
    texts = [document_text(d) for d in DOCUMENTS]
    counting = CountingBackend(llama)
    llm_questions("toy", DOCUMENTS[2:], texts[2:], counting, 1, 0, tmp_path)
    assert counting.calls == 1
    # another corpus reuses the id d3 for a different document under the same name
    other = Document(doc_id="d3", title="Sourdough bread", text="Sourdough bread\n\nA starter of flour and water "
                     "ferments for five days before it can raise a loaf of bread.")
    llm_questions("toy", [other], [document_text(other)], counting, 1, 0, tmp_path)
    assert counting.calls == 2
    # the first corpus again: its question is still cached
    llm_questions("toy", DOCUMENTS[2:], texts[2:], counting, 1, 0, tmp_path)
    assert counting.calls == 2
    assert text_hash(texts[2]) != text_hash(document_text(other))


def test_llm_training_data_keeps_source_labels(tmp_path: Path, llama: LlamaCppBackend) -> None:
    encoder = Encoder.shared()
    data = pseudo_query_training_data("toy", DOCUMENTS, encoder, "llm", max_queries=3, seed=0, cache_dir=tmp_path,
                                      llm=llama)
    query_ids = sorted(data.qrels)
    assert len(query_ids) >= 2
    assert set(query_ids) <= {"pseudo:d1", "pseudo:d2", "pseudo:d3"}
    assert all(data.qrels[q] == {q.split(":", 1)[1]: 1} for q in query_ids)
    assert data.source["method"] == "llm"
    assert data.source["teacher"]["labels"] == "qrels"
    assert data.teacher is not None
    assert data.teacher.query_ids == query_ids
    # three unrelated topics: each question is nearest to the document it was written from
    vectors = encoder.encode([data.queries[q] for q in query_ids])
    nearest = np.argmax(vectors @ data.unit_vectors.T, axis=1)
    assert [data.unit_ids[row] for row in nearest] == [q.split(":", 1)[1] for q in query_ids]


def test_collection_questions_label_their_chunks(sample_kb, llama, tmp_path, monkeypatch) -> None:
    from tests.conftest import SAMPLE_COLLECTION

    monkeypatch.setenv("EXPERTRAG_CACHE_DIR", str(tmp_path))
    data = collection_training_data(sample_kb.store, SAMPLE_COLLECTION, method="llm", max_queries=2,
                                    encoder=Encoder.shared(), llm=llama)
    query_ids = sorted(data.qrels)
    assert 1 <= len(query_ids) <= 2
    for query_id in query_ids:
        assert data.qrels[query_id] == {query_id.split(":", 1)[1]: 1}
        assert query_id.split(":", 1)[1] in data.unit_documents
    assert data.source["method"] == "llm"
    assert data.source["teacher"]["labels"] == "qrels"
    assert list((tmp_path / "llm_queries").glob(f"{SAMPLE_COLLECTION}-*.jsonl"))


def test_cli_checks_name_before_generating(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from expertrag.cli_experts import experts_app

    monkeypatch.setenv("EXPERTRAG_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n"
                                                 for d in DOCUMENTS))
    result = CliRunner().invoke(experts_app, ["train", "bad name!", "--data", str(folder), "--pseudo", "llm",
                                              "--experts-dir", str(tmp_path / "experts")])
    assert result.exit_code == 2
    assert "Invalid expert name" in result.output
    assert not (tmp_path / "cache" / "llm_queries").exists()
