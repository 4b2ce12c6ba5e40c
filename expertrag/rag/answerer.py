"""Grounded answering: the LLM answers from numbered passages and graph facts, and cites them.

Every citation in an :class:`Answer` points at a retrieved chunk and at the sentence of
that chunk that best supports the answer, as character offsets into the document.
A question the evidence does not answer gets ``found=False`` and a plain
"not found in the knowledge base" answer instead of an invented one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from expertrag.errors import LLMError
from expertrag.kg_build.chunking import split_sentences
from expertrag.kg_build.store import Fact
from expertrag.rag.llm import LLMBackend, parse_json_output
from expertrag.rag.prompts import ANSWER_SCHEMA, NOT_FOUND, build_messages
from expertrag.retrievers.hits import Hit

logger = logging.getLogger(__name__)

NOT_FOUND_ANSWER = "Not found in the knowledge base."
# How a question is answered: local (retrieved passages), global (community summaries), pike (sub-questions).
AnswerMode = Literal["local", "global", "pike"]
_WORD = re.compile(r"\w+")
_STOP_WORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been being that this these those it its as "
    "not no do does did what which who whom whose when where why how than then there their they".split()
)


@dataclass
class Citation:
    """A cited chunk and the supporting sentence in it; ``start``/``end`` index the document text."""

    number: int
    chunk_id: str
    doc_id: str
    collection: str
    start: int
    end: int
    quote: str


@dataclass
class Answer:
    """The answer to a question with its citations and the evidence it was given."""

    question: str
    answer: str
    found: bool
    citations: list[Citation] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sub_questions: list[dict[str, Any]] = field(default_factory=list)
    """PIKE mode: each sub-question with its ``question``, ``answer``, ``found``, ``citations`` and ``notes``."""
    communities: list[dict[str, Any]] = field(default_factory=list)
    """Global mode: the communities whose summaries were used, with their partial answers and scores."""
    links: list[dict[str, Any]] = field(default_factory=list)
    """Graph retrievers: the query spans linked to entities or document titles."""
    paths: list[dict[str, Any]] = field(default_factory=list)
    """Graph retrievers: relation paths between linked entities, each step with its chunk id and span."""

    def to_dict(self) -> dict[str, Any]:
        """Return the answer as a JSON-ready dict."""
        return asdict(self)


def content_words(text: str) -> set[str]:
    """Return the lower-cased words of ``text`` without stop words."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS}


class Answerer:
    """Asks an LLM to answer from evidence and turns its reply into a checked :class:`Answer`."""

    def __init__(self, backend: LLMBackend, max_tokens: int = 256) -> None:
        self.backend = backend
        self.max_tokens = max_tokens

    def answer(self, question: str, hits: Sequence[Hit], facts: Sequence[Fact] = (), notes: Sequence[str] = ()) -> Answer:
        """Answer ``question`` from ``hits`` and ``facts``; with no hits the answer is "not found"."""
        started = time.perf_counter()
        result = Answer(question=question, answer=NOT_FOUND_ANSWER, found=False, hits=list(hits),
                        facts=list(facts), notes=list(notes))
        if not hits:
            result.notes.append("no passage was retrieved, so the LLM was not called")
            result.seconds = time.perf_counter() - started
            return result

        messages = build_messages(question, hits, facts)
        raw = self.backend.complete(messages, max_tokens=self.max_tokens, json_schema=ANSWER_SCHEMA)
        try:
            reply = parse_json_output(raw, ANSWER_SCHEMA)
        except LLMError as error:
            logger.warning("Unusable LLM reply for question %r: %s", question[:80], error)
            result.notes.append("the LLM reply was not valid JSON, so no answer is given")
            result.seconds = time.perf_counter() - started
            return result

        text = str(reply.get("answer", "")).strip()
        if not text or NOT_FOUND.lower() in text.lower() or "not found" in text.lower():
            result.notes.append("the LLM found no answer in the passages")
            result.seconds = time.perf_counter() - started
            return result

        numbers = [n for n in dict.fromkeys(reply.get("citations", [])) if isinstance(n, int)]
        valid = [n for n in numbers if 1 <= n <= len(hits)]
        if len(valid) < len(numbers):
            result.notes.append(f"dropped citations outside 1..{len(hits)}: {sorted(set(numbers) - set(valid))}")
        if not valid:
            valid = self._attribute(text, hits)
            if valid:
                result.notes.append("the LLM gave no citation; the passage that shares most words with the answer is cited")
        if not valid:
            result.notes.append("the answer cites no passage and matches none, so it is withheld")
            result.seconds = time.perf_counter() - started
            return result

        result.answer = text
        result.found = True
        result.citations = [self._cite(number, hits[number - 1], question, text) for number in valid]
        result.seconds = time.perf_counter() - started
        return result

    @staticmethod
    def _attribute(text: str, hits: Sequence[Hit]) -> list[int]:
        """Return the number of the passage that contains most of the answer's content words, if one contains at least half."""
        words = content_words(text)
        if not words:
            return []
        overlaps = [len(words & content_words(hit.text)) / len(words) for hit in hits]
        best = max(range(len(hits)), key=lambda i: overlaps[i])
        return [best + 1] if overlaps[best] >= 0.5 else []

    @staticmethod
    def _cite(number: int, hit: Hit, question: str, answer: str) -> Citation:
        return cite_sentence(number, hit, question, answer)


def cite_sentence(number: int, hit: Hit, question: str, answer: str) -> Citation:
    """Cite the sentence of ``hit`` that shares most content words with the answer and question."""
    evidence_words = content_words(answer) | content_words(question)
    spans = split_sentences(hit.text) or [(0, len(hit.text))]
    start, end = max(spans, key=lambda span: len(evidence_words & content_words(hit.text[span[0]:span[1]])))
    return Citation(number, hit.chunk_id, hit.doc_id, hit.collection, hit.start + start, hit.start + end,
                    hit.text[start:end])
