"""Global questions answered by map-reduce over community summaries (GraphRAG's global search).

Selection: the community summaries most similar to the question (base-encoder cosine),
at most ``global_max_communities``, which bounds the map calls. Map: the LLM answers the
question from one summary and rates how helpful that partial answer is (0 to 100).
Reduce: the best ``global_reduce_answers`` partial answers are combined into the final
answer, which cites communities and, through them, the chunks their summaries were
written from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from expertrag.errors import LLMError
from expertrag.kg_build.community_store import Community, CommunityStore
from expertrag.kg_build.store import RecordStore
from expertrag.rag.answerer import NOT_FOUND_ANSWER, Answer, cite_sentence
from expertrag.rag.llm import LLMBackend, parse_json_output
from expertrag.rag.output_schemas import CITED_ANSWER_SCHEMA, MAP_SCHEMA, relaxed
from expertrag.rag.prompts import NOT_FOUND
from expertrag.retrievers.hits import Hit
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

MAP_SYSTEM_PROMPT = (
    "You answer a question using only one report about a group of related entities. "
    "Give the part of the answer that the report supports in one or two sentences, and a score from 0 to 100 "
    "for how helpful the report is for the question (0: not related, 100: answers it fully). "
    'Reply with JSON only, for example: {"score": 70, "answer": "Protein A drives cell growth through receptor B."}. '
    f'If the report does not help, reply {{"score": 0, "answer": "{NOT_FOUND}"}}.'
)

REDUCE_SYSTEM_PROMPT = (
    "You answer a question by combining numbered partial answers, each taken from one report. "
    "Use only what the partial answers state, answer in at most three sentences, "
    "and list the numbers of the partial answers you used. "
    'Reply with JSON only, for example: {"citations": [1, 2], "answer": "Both reports link protein A to cell growth."}. '
    f'If the partial answers do not answer the question, reply {{"citations": [], "answer": "{NOT_FOUND}"}}.'
)

MAX_SUMMARY_CHARS = 1200


@dataclass
class PartialAnswer:
    """The map step's answer from one community summary."""

    community: Community
    similarity: float
    answer: str
    score: int


class GlobalSearch:
    """Question answering over the whole knowledge base from its community summaries."""

    def __init__(
        self,
        store: RecordStore,
        backend: LLMBackend,
        encode: Callable[[list[str]], np.ndarray],
        settings: Settings | None = None,
        max_tokens: int = 200,
    ) -> None:
        self.store = store
        self.communities = CommunityStore(store)
        self.backend = backend
        self.encode = encode
        self.settings = settings or Settings()
        self.max_tokens = max_tokens

    def select(self, question: str, collection: str | None = None) -> list[tuple[Community, float]]:
        """Return the summarized communities most similar to ``question``, best first.

        With ``collection``, only communities whose evidence includes a chunk of that
        collection take part, and ``chunk_ids`` keep only those chunks.
        """
        candidates = self.communities.list(with_members=False, summarized_only=True)
        if collection is not None:
            chunks = self.store.get_chunks(chunk_id for c in candidates for chunk_id in c.chunk_ids)
            for community in candidates:
                community.chunk_ids = [
                    chunk_id for chunk_id in community.chunk_ids
                    if chunk_id in chunks and chunks[chunk_id].collection == collection
                ]
            candidates = [community for community in candidates if community.chunk_ids]
        if not candidates:
            return []

        missing = [community for community in candidates if community.embedding is None]
        if missing:
            vectors = self.encode([f"{c.title}\n{c.summary}" for c in missing])
            for community, vector in zip(missing, vectors):
                community.embedding = vector
        query = self.encode([question])[0]
        scored = [(community, float(np.asarray(community.embedding) @ query)) for community in candidates]
        scored.sort(key=lambda pair: (-pair[1], pair[0].community_id))
        return scored[: self.settings.global_max_communities]

    def map_one(self, question: str, community: Community, similarity: float) -> PartialAnswer:
        """Ask the LLM for the part of the answer that one summary supports. Raises LLMError."""
        summary = community.summary or ""
        if len(summary) > MAX_SUMMARY_CHARS:
            summary = summary[:MAX_SUMMARY_CHARS] + " ..."
        messages = [
            {"role": "system", "content": MAP_SYSTEM_PROMPT},
            {"role": "user", "content": f"Report: {community.title}\n{summary}\n\nQuestion: {question}"},
        ]
        raw = self.backend.complete(messages, max_tokens=self.max_tokens, json_schema=MAP_SCHEMA)
        reply = parse_json_output(raw, relaxed(MAP_SCHEMA))
        text = " ".join(str(reply["answer"]).split())
        score = int(reply["score"])
        if not text or NOT_FOUND.lower() in text.lower():
            score = 0
        return PartialAnswer(community, similarity, text, score)

    def reduce(self, question: str, partials: Sequence[PartialAnswer]) -> tuple[str, list[int]]:
        """Combine ``partials`` into one answer; return it with the 1-based numbers of the partials it used.

        Raises LLMError when the LLM fails or its reply is unusable.
        """
        numbered = [f"[{number}] ({p.community.title}) {p.answer}" for number, p in enumerate(partials, start=1)]
        messages = [
            {"role": "system", "content": REDUCE_SYSTEM_PROMPT},
            {"role": "user", "content": "Partial answers:\n" + "\n".join(numbered) + f"\n\nQuestion: {question}"},
        ]
        raw = self.backend.complete(messages, max_tokens=self.max_tokens, json_schema=CITED_ANSWER_SCHEMA)
        reply = parse_json_output(raw, relaxed(CITED_ANSWER_SCHEMA))
        text = " ".join(str(reply["answer"]).split())
        numbers = [n for n in dict.fromkeys(reply["citations"]) if isinstance(n, int) and 1 <= n <= len(partials)]
        return text, numbers

    def answer(self, question: str, collection: str | None = None) -> Answer:
        """Answer ``question`` by map-reduce over the selected community summaries.

        A map call that fails is logged with the community id and skipped. Raises LLMError
        only when every map call failed. A failed reduce step degrades to the best partial
        answer, and the notes say so.
        """
        started = time.perf_counter()
        result = Answer(question=question, answer=NOT_FOUND_ANSWER, found=False)

        selected = self.select(question, collection)
        if not selected:
            counts = self.communities.counts()
            if counts["communities"] == 0:
                result.notes.append("no communities are stored; run `expertrag communities build` first")
            elif counts["summarized"] == 0:
                result.notes.append("no community has a summary yet; run `expertrag communities build` with an LLM")
            else:
                result.notes.append(f"no summarized community cites a chunk of collection {collection!r}")
            result.seconds = time.perf_counter() - started
            return result

        partials, errors = self._map_all(question, selected, result.notes)
        if errors and len(errors) == len(selected):
            raise LLMError(f"All {len(selected)} map calls of the global search failed; the last error: {errors[-1]}")
        result.communities = [
            {"community_id": p.community.community_id, "level": p.community.level, "title": p.community.title,
             "similarity": round(p.similarity, 4), "score": p.score, "answer": p.answer, "used": False,
             "chunk_ids": []}
            for p in partials
        ]
        useful = sorted((p for p in partials if p.score > 0), key=lambda p: (-p.score, -p.similarity))
        useful = useful[: self.settings.global_reduce_answers]
        if not useful:
            result.notes.append(f"none of the {len(partials)} community summaries helps with the question")
            result.seconds = time.perf_counter() - started
            return result

        text, used = self._reduce_or_best(question, useful, result.notes)
        if not text or NOT_FOUND.lower() in text.lower():
            result.notes.append("the reduce step found no answer in the partial answers")
            result.seconds = time.perf_counter() - started
            return result

        result.answer, result.found = text, True
        self._cite(result, [useful[n - 1] for n in used])
        result.seconds = time.perf_counter() - started
        return result

    def _map_all(
        self, question: str, selected: Sequence[tuple[Community, float]], notes: list[str]
    ) -> tuple[list[PartialAnswer], list[LLMError]]:
        partials, errors = [], []
        for community, similarity in selected:
            try:
                partials.append(self.map_one(question, community, similarity))
            except LLMError as error:
                logger.warning("Map call on community %s failed, skipped: %s", community.community_id, error)
                notes.append(f"community {community.community_id} skipped: the map call failed ({error})")
                errors.append(error)
        return partials, errors

    def _reduce_or_best(self, question: str, useful: list[PartialAnswer], notes: list[str]) -> tuple[str, list[int]]:
        """Run the reduce step; when it fails, return the best partial answer instead."""
        try:
            text, used = self.reduce(question, useful)
        except LLMError as error:
            logger.warning("Reduce step failed for question %r, the best partial answer is used: %s", question[:80], error)
            notes.append(f"the reduce step failed ({error}), so the best partial answer is given")
            return useful[0].answer, [1]
        if not used:
            notes.append("the reduce step cited no partial answer, so the best one is cited")
            used = [1]
        return text, used

    def _cite(self, result: Answer, partials: Sequence[PartialAnswer]) -> None:
        """Fill ``hits`` and ``citations`` with the evidence chunks of the cited communities."""
        chunk_ids = list(dict.fromkeys(chunk_id for p in partials for chunk_id in p.community.chunk_ids))
        stored = self.store.get_chunks(chunk_ids)
        score_of = {}
        for p in partials:
            for chunk_id in p.community.chunk_ids:
                score_of.setdefault(chunk_id, p.similarity)
        result.hits = [
            Hit(chunk.chunk_id, chunk.doc_id, chunk.collection, chunk.title, chunk.text, chunk.start, chunk.end,
                score_of[chunk.chunk_id])
            for chunk in (stored[chunk_id] for chunk_id in chunk_ids if chunk_id in stored)
        ]
        result.citations = [
            cite_sentence(number, hit, result.question, result.answer) for number, hit in enumerate(result.hits, start=1)
        ]
        chunks_of_used = {
            p.community.community_id: [chunk_id for chunk_id in p.community.chunk_ids if chunk_id in stored]
            for p in partials
        }
        for entry in result.communities:
            entry["used"] = entry["community_id"] in chunks_of_used
            entry["chunk_ids"] = chunks_of_used.get(entry["community_id"], [])
