"""PIKE-RAG answering: decompose the question, answer each sub-question from its own retrieval, compose.

Sub-question ``k`` may contain ``#j`` (j < k), which is replaced by the answer found for
sub-question ``j`` before it is retrieved and answered. The compose step is given the
sub-questions, their answers and the passages they cite, and its citations point at those
passages, so every citation of the result is a retrieved chunk.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from expertrag.errors import LLMError
from expertrag.rag.answerer import NOT_FOUND_ANSWER, Answer, Answerer, cite_sentence
from expertrag.rag.decompose import PLACEHOLDER, Decomposer
from expertrag.rag.llm import parse_json_output
from expertrag.rag.output_schemas import CITED_ANSWER_SCHEMA, relaxed
from expertrag.rag.prompts import NOT_FOUND
from expertrag.retrievers.hits import Hit

logger = logging.getLogger(__name__)

RetrieveFunction = Callable[[str, int], list[Hit]]

COMPOSE_SYSTEM_PROMPT = (
    "You answer a question from the answers to its sub-questions and the numbered passages they come from. "
    "Answer with one complete sentence and list the numbers of the passages that support it. "
    'Reply with JSON only, for example: {"citations": [1, 3], "answer": "The director of Alien was born in South Shields."}. '
    f'If the sub-answers and passages do not answer the question, reply {{"citations": [], "answer": "{NOT_FOUND}"}}.'
)
# Passages shown to the compose step at most: the cited ones of every sub-answer come first.
MAX_COMPOSE_PASSAGES = 8
MAX_PASSAGE_CHARS = 800
# Answers this short are written into later sub-questions in place of ``#j``.
MAX_INLINE_WORDS = 6


class PikeAnswerer:
    """Multi-hop question answering by decomposition, per-sub-question retrieval and composition.

    ``retrieve(question, k)`` may be any retriever (dense, hybrid, graph), so this class
    does not depend on how the knowledge base searches.
    """

    def __init__(self, answerer: Answerer, retrieve: RetrieveFunction, max_sub_questions: int = 4,
                 decomposer: Decomposer | None = None) -> None:
        self.answerer = answerer
        self.retrieve = retrieve
        self.decomposer = decomposer or Decomposer(answerer.backend, max_sub_questions)

    def answer(self, question: str, k: int = 5) -> Answer:
        """Answer ``question``; the result carries the sub-questions, their answers and their citations.

        A sub-question whose LLM call fails is logged, recorded as not found and skipped.
        Raises LLMError only when every sub-question's LLM call failed. A failed compose
        step degrades to the last sub-answer that was found.
        """
        started = time.perf_counter()
        decomposition = self.decomposer.decompose(question)
        notes = [f"decomposed by {decomposition.method} into {len(decomposition.sub_questions)} sub-questions",
                 *decomposition.notes]

        sub_answers: list[Answer] = []
        failures: list[LLMError] = []
        for number, template in enumerate(decomposition.sub_questions, start=1):
            sub_question, unresolved = substitute_answers(template, sub_answers)
            if unresolved:
                notes.append(f"sub-question {template!r} uses answers that were not found: {unresolved}")
            failed_before = len(failures)
            sub_answers.append(self._answer_sub_question(sub_question, k, failures))
            if len(failures) > failed_before:
                notes.append(f"sub-question {number} was skipped because its LLM call failed ({failures[-1]})")
        if failures and len(failures) == len(sub_answers):
            raise LLMError(f"All {len(sub_answers)} sub-questions failed in the LLM; the last error: {failures[-1]}")

        if len(sub_answers) == 1 and sub_answers[0].question.lower() == decomposition.question.lower():
            result = sub_answers[0]
            result.question = question
        else:
            result = self._compose(question, sub_answers, notes)
        result.notes = notes + [note for note in result.notes if note not in notes]
        result.sub_questions = [
            {"question": sub.question, "answer": sub.answer, "found": sub.found,
             "citations": [asdict(citation) for citation in sub.citations], "notes": list(sub.notes)}
            for sub in sub_answers
        ]
        result.seconds = time.perf_counter() - started
        return result

    def _answer_sub_question(self, sub_question: str, k: int, failures: list[LLMError]) -> Answer:
        hits = self.retrieve(sub_question, k)
        try:
            return self.answerer.answer(sub_question, hits)
        except LLMError as error:
            logger.warning("Sub-question %r failed in the LLM, skipped: %s", sub_question[:80], error)
            failures.append(error)
            return Answer(sub_question, NOT_FOUND_ANSWER, False, hits=list(hits),
                          notes=[f"the LLM call failed ({error}), so this sub-question was skipped"])

    def _compose(self, question: str, sub_answers: Sequence[Answer], notes: list[str]) -> Answer:
        """Combine the sub-answers into the final answer with citations of their passages."""
        result = Answer(question=question, answer=NOT_FOUND_ANSWER, found=False)
        passages = compose_passages(sub_answers)
        result.hits = passages
        if not passages:
            notes.append("no sub-question retrieved a passage, so the compose step was not run")
            return result

        try:
            text, numbers = self._compose_call(question, sub_answers, passages)
        except LLMError as error:
            logger.warning("Compose step failed for question %r: %s", question[:80], error)
            found = [sub for sub in sub_answers if sub.found]
            if not found:
                raise
            notes.append(f"the compose step failed ({error}), so the last sub-answer found is given")
            text, numbers = found[-1].answer, []

        if not text or NOT_FOUND.lower() in text.lower() or "not found" in text.lower():
            notes.append("the compose step found no answer in the sub-answers")
            return result
        if not numbers:
            # The final answer rests on the sub-answers, so their citations support it.
            cited = {citation.chunk_id for sub in sub_answers for citation in sub.citations}
            numbers = [number for number, hit in enumerate(passages, start=1) if hit.chunk_id in cited]
            notes.append("the compose step cited no passage, so the sub-answers' citations are used")
        if not numbers:
            notes.append("the composed answer cites no passage, so it is withheld")
            return result

        result.answer, result.found = text, True
        result.citations = [cite_sentence(number, passages[number - 1], question, text) for number in numbers]
        return result

    def _compose_call(self, question: str, sub_answers: Sequence[Answer], passages: Sequence[Hit]) -> tuple[str, list[int]]:
        lines = ["Sub-questions and answers:"]
        for number, sub in enumerate(sub_answers, start=1):
            lines.append(f"{number}. {sub.question} -> {sub.answer if sub.found else 'not found'}")
        lines.append("Passages:")
        for number, hit in enumerate(passages, start=1):
            text = hit.text if len(hit.text) <= MAX_PASSAGE_CHARS else hit.text[:MAX_PASSAGE_CHARS] + " ..."
            lines.append(f"[{number}] {hit.title + ': ' if hit.title else ''}{text}")
        lines.append(f"Question: {question}")
        messages = [
            {"role": "system", "content": COMPOSE_SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(lines)},
        ]
        raw = self.answerer.backend.complete(messages, max_tokens=self.answerer.max_tokens, json_schema=CITED_ANSWER_SCHEMA)
        reply = parse_json_output(raw, relaxed(CITED_ANSWER_SCHEMA))
        text = " ".join(str(reply["answer"]).split())
        numbers = [n for n in dict.fromkeys(reply["citations"]) if isinstance(n, int) and 1 <= n <= len(passages)]
        return text, numbers


def substitute_answers(template: str, earlier: Sequence[Answer]) -> tuple[str, list[int]]:
    """Fill ``#j`` in ``template`` with the answer of sub-question j.

    An answer of at most ``MAX_INLINE_WORDS`` words replaces ``#j``. A longer answer (the
    answerer writes full sentences) stays as ``#j`` and is appended as context, for example
    "Where was #1 born? (#1: Ridley Scott directed Alien.)". An answer that was not found
    is replaced by the text of its sub-question, which still names what is asked for.
    Returns the question and the numbers of the answers that were not found.
    """
    unresolved: list[int] = []
    context: dict[int, str] = {}

    def replace(match: re.Match[str]) -> str:
        number = int(match.group(1))
        if not 1 <= number <= len(earlier):
            unresolved.append(number)
            return match.group(0)
        answer = earlier[number - 1]
        if not answer.found:
            unresolved.append(number)
            return f"({answer.question.rstrip('?')})"
        text = answer.answer.strip().rstrip(".")
        if len(text.split()) <= MAX_INLINE_WORDS:
            return text
        context[number] = text
        return match.group(0)

    question = PLACEHOLDER.sub(replace, template)
    if context:
        question += " (" + "; ".join(f"#{number}: {text}." for number, text in context.items()) + ")"
    return question, unresolved


def compose_passages(sub_answers: Sequence[Answer]) -> list[Hit]:
    """Return the passages given to the compose step: cited ones first, then each sub-question's best hit."""
    by_id: dict[str, Hit] = {}
    for sub in sub_answers:
        for citation in sub.citations:
            hit = next((hit for hit in sub.hits if hit.chunk_id == citation.chunk_id), None)
            if hit is not None:
                by_id.setdefault(hit.chunk_id, hit)
    for sub in sub_answers:
        if sub.hits:
            by_id.setdefault(sub.hits[0].chunk_id, sub.hits[0])
    return list(by_id.values())[:MAX_COMPOSE_PASSAGES]
