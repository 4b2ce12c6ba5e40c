"""Decomposition of a multi-hop question into atomic sub-questions (the first step of PIKE-RAG).

The LLM proposes the sub-questions as JSON, which is validated and repaired: other list
shapes, numbered lines instead of JSON, duplicates, and references to answers that do not
exist yet are mended or dropped. ``#1``, ``#2`` … in a sub-question stand for the answers
of earlier sub-questions. When the model output stays unusable, rules split the question
on conjunctions, relative clauses and nested "the X of the Y of Z" phrases.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from expertrag.errors import LLMError
from expertrag.rag.llm import LLMBackend, parse_json_output, shorten
from expertrag.rag.output_schemas import decompose_schema, relaxed

logger = logging.getLogger(__name__)

# Validation schema of a reply; decoding is constrained by ``decompose_schema(max_sub_questions)``.
DECOMPOSE_SCHEMA = relaxed(decompose_schema(1))

DECOMPOSE_SYSTEM_PROMPT = (
    "You split a question into the simple questions that must be answered, in order, to answer it. "
    "Each simple question asks for one fact. Write #1 for the answer of the first simple question, #2 for the second. "
    "A question that asks for one fact stays as it is. "
    'Reply with JSON only, for example for "Where was the director of Alien born?": '
    '{"sub_questions": ["Who directed Alien?", "Where was #1 born?"]}.'
)

DecompositionMethod = Literal["llm", "rules", "none"]

# ``#j`` in a sub-question stands for the answer of sub-question j.
PLACEHOLDER = re.compile(r"#(\d+)")
_QUESTION_START = r"(?:what|who|whom|whose|which|when|where|why|how|is|are|was|were|did|does|do|can|has|have)\b"
_CONJUNCTION = re.compile(rf"\s*,?\s+and\s+(?={_QUESTION_START})", re.IGNORECASE)
_RELATIVE = re.compile(
    r"^(?P<head>.*?\b)(?P<phrase>the\s+(?P<noun>(?:[\w'-]+\s+){0,2}?[\w'-]+))\s+"
    r"(?P<relative>that|which|who|where|when)\s+(?P<clause>.+?)\s*\??$",
    re.IGNORECASE,
)
_NESTED_OF = re.compile(
    r"^(?P<head>(?:what|who|which|where|when)\s+(?:is|was|are|were)\s+the\s+[\w'-]+(?:\s+[\w'-]+){0,2}?\s+of)\s+"
    r"(?P<inner>the\s+[\w'-]+(?:\s+[\w'-]+){0,2}?\s+of\s+.+?)\s*\??$",
    re.IGNORECASE,
)
_AUXILIARY_CLAUSE = re.compile(r"^(?P<subject>.+?)\s+(?P<auxiliary>is|are|was|were|did|does|do|has|have)\s+(?P<rest>.+)$", re.IGNORECASE)
_HEAD_WITH_AUXILIARY = re.compile(r"^\w+\s+(?:did|does|do|is|was|are|were|has|have)$", re.IGNORECASE)
_NUMBERED_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*(?P<text>.+\?)\s*$", re.MULTILINE)


@dataclass
class Decomposition:
    """Sub-questions in the order they must be answered, and how they were found."""

    question: str
    sub_questions: list[str]
    method: DecompositionMethod
    notes: list[str] = field(default_factory=list)


class Decomposer:
    """Splitter of questions into sub-questions: the LLM first, rules as the fallback."""

    def __init__(self, backend: LLMBackend | None, max_sub_questions: int = 4, max_tokens: int | None = None) -> None:
        self.backend = backend
        self.max_sub_questions = max_sub_questions
        # About 50 tokens per sub-question, so a full list fits.
        self.max_tokens = max_tokens or 50 * max_sub_questions + 40

    def decompose(self, question: str) -> Decomposition:
        """Return the sub-questions of ``question``.

        Unusable model output and backend failures (LLMError: server down, timeout) are
        logged and the rules take over. The notes of the result say which path was taken.
        """
        question = " ".join(question.split())
        notes: list[str] = []
        if self.backend is not None:
            messages = [
                {"role": "system", "content": DECOMPOSE_SYSTEM_PROMPT},
                {"role": "user", "content": f"Question: {question}"},
            ]
            try:
                schema = decompose_schema(self.max_sub_questions)
                raw = self.backend.complete(messages, max_tokens=self.max_tokens, json_schema=schema)
                sub_questions = parse_sub_questions(raw, self.max_sub_questions)
                return Decomposition(question, sub_questions, "llm", notes)
            except LLMError as error:
                logger.warning("LLM decomposition of %r failed, rules are used: %s", question[:80], error)
                notes.append(f"the LLM decomposition was unusable ({shorten(str(error), 160)}), so rules split the question")

        sub_questions = rule_based_decomposition(question)[: self.max_sub_questions]
        method: DecompositionMethod = "rules" if len(sub_questions) > 1 else "none"
        if method == "none":
            notes.append("the rules found no way to split the question, so it is answered as one")
        return Decomposition(question, sub_questions, method, notes)


def parse_sub_questions(raw: str, max_sub_questions: int = 4) -> list[str]:
    """Extract validated sub-questions from an LLM reply.

    Accepts the schema's ``{"sub_questions": [...]}``, any object whose first list contains
    strings or ``{"question": ...}`` objects, and numbered or bulleted lines that end in
    '?'. Sub-questions are normalized (whitespace, a final '?'), duplicates dropped, and a
    sub-question that refers to its own, a later or a dropped answer is dropped, and so is
    the last one of a JSON reply that was cut off. References are renumbered to match.
    Raises LLMError when nothing usable remains.
    """
    try:
        items: list[Any] = parse_json_output(raw, DECOMPOSE_SCHEMA)["sub_questions"]
    except LLMError as schema_error:
        items = _items_from_other_shapes(raw)
        if not items:
            raise schema_error
    if raw.rstrip().startswith("{") and not raw.rstrip().endswith(("}", "]")):
        # The reply was cut off, so its last sub-question may be cut too ("Who directed Al").
        items = items[:-1]

    sub_questions: list[str] = []
    # Position in the reply (1-based) -> number among the kept sub-questions, so "#k"
    # still points at the same answer after earlier items were dropped.
    renumbered: dict[int, int] = {}
    for position, item in enumerate(items, start=1):
        text = _item_text(item)
        if not text:
            continue
        references = [int(number) for number in PLACEHOLDER.findall(text)]
        if any(number not in renumbered for number in references):
            logger.debug("dropped sub-question %r: it refers to an answer that is not available before it", text)
            continue
        text = PLACEHOLDER.sub(lambda match: f"#{renumbered[int(match.group(1))]}", text)
        text = text.rstrip(" ?.") + "?"
        duplicate = next((i for i, kept in enumerate(sub_questions, start=1) if kept.lower() == text.lower()), None)
        if duplicate is not None:
            renumbered[position] = duplicate
            continue
        if len(sub_questions) == max_sub_questions:
            break
        sub_questions.append(text)
        renumbered[position] = len(sub_questions)
    if not sub_questions:
        raise LLMError(f"LLM output contains no usable sub-question: {shorten(raw or '')!r}")
    return sub_questions


def _items_from_other_shapes(raw: str) -> list[Any]:
    """Return candidate sub-questions from a reply that does not match the schema."""
    try:
        value = parse_json_output(raw)
    except LLMError:
        value = None
    if isinstance(value, dict):
        for member in value.values():
            if isinstance(member, list) and member:
                return member
            if isinstance(member, str) and member.strip().endswith("?"):
                return [member]
    return [match.group("text") for match in _NUMBERED_LINE.finditer(raw or "")]


def _item_text(item: Any) -> str:
    if isinstance(item, dict):
        item = item.get("question") or item.get("sub_question") or item.get("text") or ""
    if not isinstance(item, str):
        return ""
    return " ".join(item.split())


def rule_based_decomposition(question: str) -> list[str]:
    """Split ``question`` by rules; return ``[question]`` when no rule applies.

    The rules are tried in this order:

    - two questions joined by "and" before a question word: "Who directed Alien and when
      was it released?"
    - a nested "the X of the Y of Z" phrase: "Who is the spouse of the director of
      Alien?" becomes "What is the director of Alien?" then "Who is the spouse of #1?"
    - a noun with a relative clause: "What is the capital of the country where Ada
      Lovelace was born?" becomes "Where was Ada Lovelace born?" then "What is the
      capital of #1?"
    """
    question = " ".join(question.split()).rstrip(" ?") + "?"

    parts = [part.strip(" ,?") for part in _CONJUNCTION.split(question[:-1])]
    parts = [part for part in parts if part]
    if len(parts) > 1:
        return [part[0].upper() + part[1:] + "?" for part in parts]

    nested = _NESTED_OF.match(question)
    if nested:
        inner = nested.group("inner")
        auxiliary = nested.group("head").split()[1]
        return [f"What {auxiliary} {inner}?", f"{nested.group('head')} #1?"]

    relative = _RELATIVE.match(question)
    if relative and relative.group("head").strip():
        clause, tail = relative.group("clause"), ""
        words = clause.split()
        if _HEAD_WITH_AUXILIARY.match(relative.group("head").strip()) and len(words) > 2:
            # "When did the person who founded Tesla die?": the last word is the main verb.
            clause, tail = " ".join(words[:-1]), f" {words[-1]}"
        first = _relative_clause_question(relative.group("noun"), relative.group("relative").lower(), clause)
        second = f"{relative.group('head')}#1{tail}?"
        return [first, second[0].upper() + second[1:]]

    return [question]


def _relative_clause_question(noun: str, relative: str, clause: str) -> str:
    """Turn "the <noun> <relative> <clause>" into the question whose answer is that noun."""
    if relative == "who":
        return f"Who {clause}?"
    if relative in ("where", "when"):
        inverted = _AUXILIARY_CLAUSE.match(clause)
        if inverted:
            return f"{relative.capitalize()} {inverted.group('auxiliary').lower()} {inverted.group('subject')} {inverted.group('rest')}?"
        return f"{relative.capitalize()} {clause}?"
    return f"Which {noun} {clause}?"
