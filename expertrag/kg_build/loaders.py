"""Corpus loaders: BEIR folders, JSON Lines and folders of text files, streamed as documents.

Every loader reports a bad record as a :class:`CorpusFormatError` naming the file and
line. With ``on_error="skip"`` the record is logged, counted in ``skipped`` and left out.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from expertrag.errors import CorpusFormatError, InputError
from expertrag.records import Document

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
CorpusFormat = Literal["auto", "beir", "jsonl", "text"]
TEXT_SUFFIXES = (".txt", ".md")


def compose_text(title: str, body: str) -> str:
    """Join a title and a body into the text that gets chunked."""
    if title and body:
        return f"{title}\n\n{body}"
    return title or body


@dataclass
class CorpusLoader:
    """Base class: iterate documents, applying the on-error policy."""

    path: Path
    on_error: OnError = "raise"
    skipped: list[CorpusFormatError] = field(default_factory=list)

    def __iter__(self) -> Iterator[Document]:
        self.skipped = []
        yield from self._documents()

    def _documents(self) -> Iterator[Document]:
        raise NotImplementedError

    def _reject(self, error: CorpusFormatError) -> None:
        if self.on_error == "raise":
            raise error
        self.skipped.append(error)
        if len(self.skipped) <= 20:
            logger.warning("Skipped a record: %s", error)
        elif len(self.skipped) == 21:
            logger.warning("More records skipped; the rest are counted, not logged")


@dataclass
class JsonlLoader(CorpusLoader):
    """One JSON object a line; field names are configurable."""

    id_field: str = "_id"
    title_field: str | None = "title"
    text_field: str = "text"

    def _documents(self) -> Iterator[Document]:
        source = str(self.path)
        if self.path.stat().st_size == 0:
            raise CorpusFormatError(source, None, "The corpus file is empty", "Give a file with one JSON object a line")
        seen: set[str] = set()
        with self.path.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    document = self._parse_line(raw, source, line_number)
                except CorpusFormatError as error:
                    self._reject(error)
                    continue
                if document is None:
                    continue
                if document.doc_id in seen:
                    self._reject(
                        CorpusFormatError(source, line_number, f"Duplicate document id {document.doc_id!r}", "Ids must be unique within a collection")
                    )
                    continue
                seen.add(document.doc_id)
                yield document

    def _parse_line(self, raw: bytes, source: str, line_number: int) -> Document | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorpusFormatError(source, line_number, f"Invalid UTF-8 at byte {error.start}", "Re-encode the file as UTF-8") from None
        if not line.strip():
            return None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusFormatError(source, line_number, f"Invalid JSON: {error.msg} at column {error.colno}") from None
        if not isinstance(record, dict):
            raise CorpusFormatError(source, line_number, f"Expected a JSON object, found {type(record).__name__}")

        doc_id = record.get(self.id_field)
        if doc_id is None or str(doc_id).strip() == "":
            raise CorpusFormatError(source, line_number, f"Missing document id field {self.id_field!r}", "Set --id-field to the field that contains the id")
        title = record.get(self.title_field, "") if self.title_field else ""
        body = record.get(self.text_field, "")
        if not isinstance(title, str) or not isinstance(body, (str, type(None))):
            raise CorpusFormatError(source, line_number, f"Fields {self.title_field!r} and {self.text_field!r} must be strings")
        text = compose_text((title or "").strip(), (body or "").strip())
        if not text:
            raise CorpusFormatError(source, line_number, f"Record {doc_id!r} has no text", f"Give a non-empty {self.text_field!r} or {self.title_field!r}")

        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        return Document(doc_id=str(doc_id), text=text, title=(title or "").strip(), source=source, line=line_number, metadata=metadata)


@dataclass
class BeirLoader(JsonlLoader):
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

    def __post_init__(self) -> None:
        self.folder = self.path
        self.path = self.folder / "corpus.jsonl"
        if not self.path.is_file():
            raise InputError(f"Not a BEIR folder: {self.folder} has no corpus.jsonl")


@dataclass
class TextFolderLoader(CorpusLoader):
    """Every ``.txt`` and ``.md`` file under a folder is one document; its id is the relative path."""

    def _documents(self) -> Iterator[Document]:
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise CorpusFormatError(str(self.path), None, "No .txt or .md files found", "Point to a folder that contains .txt or .md files")
        for file in files:
            try:
                yield self._read(file)
            except CorpusFormatError as error:
                self._reject(error)

    def _read(self, file: Path) -> Document:
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            raise CorpusFormatError(str(file), line, f"Invalid UTF-8 at byte {error.start}", "Re-encode the file as UTF-8") from None
        text = text.strip()
        if not text:
            raise CorpusFormatError(str(file), None, "The file is empty")
        title = ""
        if file.suffix.lower() == ".md" and text.startswith("# "):
            title = text.splitlines()[0][2:].strip()
        return Document(doc_id=file.relative_to(self.path).as_posix(), text=text, title=title, source=str(file), line=1)


def open_corpus(
    path: str | Path,
    corpus_format: CorpusFormat = "auto",
    on_error: OnError = "raise",
    id_field: str = "_id",
    title_field: str | None = "title",
    text_field: str = "text",
) -> CorpusLoader:
    """Return the loader for ``path``; ``auto`` picks it from what the path holds."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Corpus path not found: {path}")
    if corpus_format == "auto":
        if path.is_dir():
            corpus_format = "beir" if (path / "corpus.jsonl").is_file() else "text"
        elif path.suffix.lower() in (".jsonl", ".json"):
            corpus_format = "jsonl"
        elif path.suffix.lower() in TEXT_SUFFIXES:
            raise InputError(f"{path} is a single text file: put it in a folder and ingest the folder")
        else:
            raise InputError(f"Unknown corpus format for {path}: give --format beir, jsonl or text")

    if corpus_format == "beir":
        return BeirLoader(path=path, on_error=on_error, id_field=id_field, title_field=title_field, text_field=text_field)
    if corpus_format == "jsonl":
        if path.is_dir():
            raise InputError(f"{path} is a folder: --format jsonl needs a .jsonl file")
        return JsonlLoader(path=path, on_error=on_error, id_field=id_field, title_field=title_field, text_field=text_field)
    if corpus_format == "text":
        if not path.is_dir():
            raise InputError(f"{path} is not a folder: --format text needs a folder of .txt/.md files")
        return TextFolderLoader(path=path, on_error=on_error)
    raise InputError(f"Unknown corpus format {corpus_format!r}: use auto, beir, jsonl or text")


def load_queries(folder: str | Path) -> dict[str, str]:
    """Read ``queries.jsonl`` of a BEIR folder into {query id: text}."""
    path = Path(folder) / "queries.jsonl"
    if not path.is_file():
        raise InputError(f"Not a BEIR folder: {folder} has no queries.jsonl")
    queries: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                queries[str(record["_id"])] = str(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise CorpusFormatError(str(path), line_number, f"Invalid query record: {error}") from None
    return queries


def load_qrels(folder: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """Read ``qrels/<split>.tsv`` into {query id: {doc id: grade}}, keeping grades above 0."""
    path = Path(folder) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))
        raise InputError(f"Qrels not found: {path} (available splits: {', '.join(available) or 'none'})")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for line_number, row in enumerate(reader, start=1):
            if line_number == 1 and row and row[0] == "query-id":
                continue
            if len(row) < 3:
                raise CorpusFormatError(str(path), line_number, "Expected 3 tab-separated columns: query-id, corpus-id, score")
            try:
                grade = int(float(row[2]))
            except ValueError:
                raise CorpusFormatError(str(path), line_number, f"Invalid score {row[2]!r}") from None
            if grade > 0:
                qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels
