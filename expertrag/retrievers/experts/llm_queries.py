"""Pseudo-queries written by the local LLM: one search question per sampled document.

A random sentence of a document (the ``sentence`` method) reads like the document, not
like what a user types. A question the LLM writes about the document is closer in form to a
real query, and its source document is its label. Measured on CISI, LISA and climate_fever
with 300 pseudo-queries each, experts trained on either gained about the same on real test
queries (``benchmarks/results/pseudo_queries.md``), so ``sentence`` stays the default.

Generation is slow on CPU: with the default 0.5B model a question takes about 1.5 s on 2
cores. So each question is appended to a JSONL file as soon as it exists, and a rerun
continues where the last one stopped. The file name contains a hash of the model and the
prompt, so a new model or prompt starts a new file. Each line records a hash of the text the
LLM saw, so a cached question is reused only for the same document text: another corpus with
the same document ids, or an edited document, gets new questions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from expertrag.records import Document

if TYPE_CHECKING:
    from expertrag.rag.llm import LLMBackend

logger = logging.getLogger(__name__)

PROMPT_VERSION = 1
SYSTEM_PROMPT = "You write search queries."
USER_PROMPT = ("Document:\n{text}\n\nWrite one short question that a researcher would type into a search engine "
               "and that this document answers. Reply with the question only.")
DOCUMENT_CHARS = 700
"""Characters of the document (title and body) shown to the LLM. The start of a document names its topic."""
MAX_TOKENS = 40
MIN_WORDS = 3
MAX_WORDS = 32
PROGRESS_EVERY = 25
"""Newly written questions between two progress lines in the log (the progress bar needs a terminal)."""
_PREFIX = re.compile(r"^\s*(?:question|query|q)\s*[:.-]\s*", re.IGNORECASE)


def clean_question(reply: str) -> str | None:
    """Return the first line of an LLM reply as a question, or None when it is too short to be one.

    Quotes, a ``Question:`` prefix and extra whitespace are removed, and the question is
    cut to ``MAX_WORDS`` words, since a small model sometimes runs on.
    """
    line = next((part for part in reply.splitlines() if part.strip()), "")
    line = _PREFIX.sub("", line.strip()).strip().strip("\"'`").strip()
    words = line.split()
    if len(words) < MIN_WORDS:
        return None
    return " ".join(words[:MAX_WORDS])


def copies_document(question: str, document_text: str, words: int = 10) -> bool:
    """Return True when the question contains a run of ``words`` consecutive words of the document.

    A small model sometimes echoes the document instead of asking about it. Such a reply
    teaches the expert nothing that a sentence cut from the document would not.
    """
    tokens = question.lower().split()
    text = " ".join(document_text.lower().split())
    return any(" ".join(tokens[start:start + words]) in text for start in range(len(tokens) - words + 1))


def cache_file(cache_dir: Path, name: str, backend_name: str) -> Path:
    """Return the JSONL file of the questions that one model wrote for ``name`` with this prompt."""
    key = json.dumps([backend_name, PROMPT_VERSION, SYSTEM_PROMPT, USER_PROMPT, DOCUMENT_CHARS, MAX_TOKENS])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cache_dir / "llm_queries" / f"{safe}-{digest}.jsonl"


def text_hash(document_text: str) -> str:
    """Return a short sha256 of the first ``DOCUMENT_CHARS`` characters, the part of a document in the prompt."""
    return hashlib.sha256(document_text[:DOCUMENT_CHARS].encode("utf-8")).hexdigest()[:16]


def read_cached(path: Path) -> dict[tuple[str, str], str | None]:
    """Return {(document id, text hash): question or None} from a cache file.

    A torn, unreadable or mistyped line is skipped, so a damaged file costs at most the
    questions on those lines.
    """
    cached: dict[tuple[str, str], str | None] = {}
    if not path.exists():
        return cached
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            doc_id, digest, question = record.get("doc"), record.get("text_sha256"), record.get("question")
            if isinstance(doc_id, str) and isinstance(digest, str) and (question is None or isinstance(question, str)):
                cached[(doc_id, digest)] = question
    return cached


def _open_for_append(path: Path) -> TextIO:
    """Open ``path`` for appending lines, first ending a line that an interrupted run left torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, 2)
            torn = handle.read(1) != b"\n"
        if torn:
            with path.open("a", encoding="utf-8") as handle:
                handle.write("\n")
    return path.open("a", encoding="utf-8")


def llm_questions(
    name: str,
    documents: list[Document],
    document_texts: list[str],
    backend: "LLMBackend",
    max_queries: int,
    seed: int,
    cache_dir: Path,
) -> dict[str, str]:
    """Return {document id: question} for up to ``max_queries`` documents in a seeded random order.

    Documents whose reply is too short or copies the document are skipped (the reply stays in
    the cache file). So the result has fewer than ``max_queries`` questions only when the
    collection runs out of documents.
    """
    path = cache_file(cache_dir, name, backend.name)
    cached = read_cached(path)
    order = np.random.default_rng(seed).permutation(len(documents))
    target_count = min(max_queries, len(documents))
    questions: dict[str, str] = {}
    written = 0
    from tqdm.auto import tqdm

    with _open_for_append(path) as handle, tqdm(total=target_count, desc=f"LLM questions {name}", disable=None) as bar:
        for index in order:
            if len(questions) >= target_count:
                break
            doc_id = documents[index].doc_id
            digest = text_hash(document_texts[index])
            if (doc_id, digest) in cached:
                question = cached[(doc_id, digest)]
            else:
                text = document_texts[index][:DOCUMENT_CHARS]
                reply = backend.complete([{"role": "system", "content": SYSTEM_PROMPT},
                                          {"role": "user", "content": USER_PROMPT.format(text=text)}],
                                         max_tokens=MAX_TOKENS, temperature=0.0)
                question = clean_question(reply)
                handle.write(json.dumps({"doc": doc_id, "text_sha256": digest, "question": question}) + "\n")
                handle.flush()
                written += 1
                if written % PROGRESS_EVERY == 0:
                    logger.info("%s: %d of %d LLM questions, %d written now", name, len(questions), target_count, written)
            if question and not copies_document(question, document_texts[index]):
                questions[doc_id] = question
                bar.update(1)
    logger.info("%s: %d LLM questions (%d written now, the rest from %s)", name, len(questions), written, path)
    return questions
