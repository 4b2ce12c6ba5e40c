"""Corpus loaders on good and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertrag.errors import CorpusFormatError, InputError
from expertrag.kg_build.loaders import load_qrels, load_queries, open_corpus
from expertrag.sample import SAMPLE_DIR


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    with path.open("wb") as out:
        for line in lines:
            out.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            out.write(b"\n")
    return path


def test_beir_folder_reads_every_document() -> None:
    documents = list(open_corpus(SAMPLE_DIR))
    assert len(documents) == 100
    first = documents[0]
    assert first.source.endswith("corpus.jsonl")
    assert first.line == 1
    assert first.text.startswith(first.title + "\n\n")


def test_beir_queries_and_qrels() -> None:
    queries = load_queries(SAMPLE_DIR)
    qrels = load_qrels(SAMPLE_DIR)
    assert len(queries) == 30
    assert set(qrels) <= set(queries)
    assert qrels["36"] == {"5152028": 1, "11705328": 1}


def test_jsonl_custom_fields(tmp_path: Path) -> None:
    corpus = write_lines(tmp_path / "c.jsonl", [
        json.dumps({"id": "a", "heading": "Alpha", "body": "First text."}),
        "",
        json.dumps({"id": "b", "heading": "", "body": "Second text."}),
    ])
    documents = list(open_corpus(corpus, id_field="id", title_field="heading", text_field="body"))
    assert [d.doc_id for d in documents] == ["a", "b"]
    assert documents[0].text == "Alpha\n\nFirst text."
    assert documents[1].text == "Second text."
    assert documents[1].line == 3


def test_text_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "one.txt").write_text("Plain text file.", encoding="utf-8")
    (tmp_path / "sub" / "two.md").write_text("# Title\n\nBody.", encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("a,b", encoding="utf-8")
    documents = list(open_corpus(tmp_path))
    assert [d.doc_id for d in documents] == ["one.txt", "sub/two.md"]
    assert documents[1].title == "Title"
    assert documents[1].source == str(tmp_path / "sub" / "two.md")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"_id": "x", "text": "ok"', "Invalid JSON"),
        ('{"_id": "x", "title": "", "text": ""}', "has no text"),
        ('{"title": "t", "text": "no id"}', "Missing document id"),
        ('["not", "an", "object"]', "Expected a JSON object"),
        (b'{"_id": "x", "text": "caf\xe9"}', "Invalid UTF-8"),
    ],
)
def test_bad_jsonl_record_names_file_and_line(tmp_path: Path, line: str | bytes, problem: str) -> None:
    corpus = write_lines(tmp_path / "bad.jsonl", [json.dumps({"_id": "good", "text": "Fine."}), line])
    with pytest.raises(CorpusFormatError) as caught:
        list(open_corpus(corpus))
    assert problem in str(caught.value)
    assert caught.value.line == 2
    assert "line 2 of" in str(caught.value)
    assert str(corpus) in str(caught.value)


def test_skip_policy_counts_bad_records(tmp_path: Path) -> None:
    corpus = write_lines(tmp_path / "mixed.jsonl", [
        json.dumps({"_id": "1", "text": "One."}),
        "{broken",
        json.dumps({"_id": "2", "text": ""}),
        json.dumps({"_id": "1", "text": "Duplicate id."}),
        json.dumps({"_id": "3", "text": "Three."}),
    ])
    loader = open_corpus(corpus, on_error="skip")
    documents = list(loader)
    assert [d.doc_id for d in documents] == ["1", "3"]
    assert [error.line for error in loader.skipped] == [2, 3, 4]


def test_empty_file(tmp_path: Path) -> None:
    corpus = tmp_path / "empty.jsonl"
    corpus.write_bytes(b"")
    with pytest.raises(CorpusFormatError, match="empty"):
        list(open_corpus(corpus))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        open_corpus(tmp_path / "nowhere.jsonl")


def test_unknown_format(tmp_path: Path) -> None:
    corpus = tmp_path / "data.csv"
    corpus.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="Unknown corpus format"):
        open_corpus(corpus)
    with pytest.raises(InputError, match="Unknown corpus format"):
        open_corpus(tmp_path, corpus_format="xml")  # type: ignore[arg-type]


def test_undecodable_text_file_names_line(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"line one\nline two \xff\xfe\n")
    with pytest.raises(CorpusFormatError) as caught:
        list(open_corpus(tmp_path))
    assert caught.value.line == 2
    assert "bad.txt" in str(caught.value)


def test_folder_without_text_files(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\x00")
    with pytest.raises(CorpusFormatError, match="No .txt or .md files"):
        list(open_corpus(tmp_path))
