"""LLM-written community summaries: a title and a few sentences per community, as validated JSON.

The prompt shows the community's top entities, the relations between its members and
excerpts of the chunks that mention most members. Answers built on a summary cite those
chunks, though nothing checks that the model kept to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from expertrag.errors import LLMError
from expertrag.kg_build.community_store import Community, CommunityStore
from expertrag.kg_build.store import Fact, RecordStore
from expertrag.rag.llm import LLMBackend, parse_json_output
from expertrag.rag.output_schemas import SUMMARY_SCHEMA, relaxed

logger = logging.getLogger(__name__)

# The prompt's example title; the 0.5B model sometimes returns it unchanged.
EXAMPLE_TITLE = "Protein A and cell growth"

SUMMARY_SYSTEM_PROMPT = (
    "You write a short report about a group of related entities from a document collection. "
    "Use only the entities, relations and excerpts you are given. "
    "Give a title of at most ten words that names the main topic, and a summary of two to four sentences "
    "that says what the entities are and how they are related. "
    f'Reply with JSON only, for example: {{"title": "{EXAMPLE_TITLE}", '
    '"summary": "Protein A binds receptor B, which drives cell growth. ..."}.'
)

# Prompt bounds: a small local model spends most of a call reading the prompt.
MAX_ENTITIES = 10
MAX_FACTS = 8
MAX_EXCERPT_CHARS = 300
MAX_TITLE_CHARS = 120
# Reply bound: a title and two to four sentences fit. A cut summary is closed by the JSON repair.
SUMMARY_MAX_TOKENS = 200
# Consecutive failed summaries after which a run stops, because the backend is likely down.
MAX_CONSECUTIVE_FAILURES = 3


class CommunitySummarizer:
    """Writer of community summaries: one LLM call per community, each summary stored at once."""

    def __init__(self, store: RecordStore, backend: LLMBackend, max_tokens: int = SUMMARY_MAX_TOKENS) -> None:
        self.store = store
        self.backend = backend
        self.max_tokens = max_tokens
        self.notes: list[str] = []

    def summarize_all(
        self,
        community_store: CommunityStore,
        communities: Sequence[Community],
        encode: Callable[[list[str]], np.ndarray] | None = None,
        max_summaries: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, list[str], int]:
        """Summarize ``communities`` in order, at most ``max_summaries`` of them.

        Returns (summaries written, ids of failed communities, communities left without a
        summary). After ``MAX_CONSECUTIVE_FAILURES`` failures in a row the run stops and
        the rest stay pending for the next run.
        """
        todo = list(communities) if max_summaries is None else list(communities)[:max_summaries]
        written, failed = 0, []
        consecutive_failures = 0
        for done, community in enumerate(todo, start=1):
            try:
                title, summary = self.summarize(community)
            except LLMError as error:
                logger.warning("Summary of community %s failed, skipped: %s", community.community_id, error)
                failed.append(community.community_id)
                consecutive_failures += 1
                if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    self.notes.append(
                        f"stopped after {consecutive_failures} failed summaries in a row; run the build again to resume"
                    )
                    logger.error("Stopped summarizing after %d consecutive failures", consecutive_failures)
                    break
                continue
            consecutive_failures = 0
            embedding = encode([f"{title}\n{summary}"])[0] if encode is not None else None
            community_store.write_summary(community.community_id, title, summary, self.backend.name, embedding)
            written += 1
            if progress is not None:
                progress(done, len(todo))
        pending = len(communities) - written
        if max_summaries is not None and len(communities) > max_summaries:
            self.notes.append(f"wrote at most {max_summaries} summaries (--max-summaries); {pending} communities still lack one")
        return written, failed, pending

    def summarize(self, community: Community) -> tuple[str, str]:
        """Return the (title, summary) the LLM writes for ``community``. Raises LLMError when it fails."""
        messages = [
            {"role": "system", "content": SUMMARY_SYSTEM_PROMPT},
            {"role": "user", "content": self.describe(community)},
        ]
        raw = self.backend.complete(messages, max_tokens=self.max_tokens, json_schema=SUMMARY_SCHEMA)
        reply = parse_json_output(raw, relaxed(SUMMARY_SCHEMA))
        title = " ".join(str(reply["title"]).split())[:MAX_TITLE_CHARS]
        summary = " ".join(str(reply["summary"]).split())
        if not title or not summary:
            raise LLMError(f"LLM summary of community {community.community_id} has an empty title or summary: {reply!r}")
        if title.lower() == EXAMPLE_TITLE.lower():
            raise LLMError(f"LLM summary of community {community.community_id} copies the prompt's example: {reply!r}")
        return title, summary

    def describe(self, community: Community) -> str:
        """Return the user message that shows the community's entities, relations and excerpts."""
        names = {}
        for entity_id in community.top_entities[:MAX_ENTITIES]:
            entity = self.store.get_entity(entity_id)
            if entity is not None:
                names[entity_id] = f"{entity.name} ({entity.label})"
        parts = ["Entities:", *(f"- {name}" for name in names.values())]

        facts = _facts_inside(self.store, community)
        if facts:
            parts.append("Relations (subject | relation | object):")
            parts.extend(f"- {f.subject} | {f.predicate.replace('_', ' ')} | {f.object}" for f in facts)

        chunks = self.store.get_chunks(community.chunk_ids)
        excerpts = [chunks[chunk_id] for chunk_id in community.chunk_ids if chunk_id in chunks]
        if excerpts:
            parts.append("Excerpts:")
            for chunk in excerpts:
                text = chunk.text if len(chunk.text) <= MAX_EXCERPT_CHARS else chunk.text[:MAX_EXCERPT_CHARS] + " ..."
                parts.append(f"- {chunk.title}: {text}" if chunk.title else f"- {text}")
        return "\n".join(parts)


def _facts_inside(store: RecordStore, community: Community) -> list[Fact]:
    """Return up to ``MAX_FACTS`` relations whose subject and object are both members."""
    members = set(community.member_ids)
    facts = store.facts_about(community.top_entities, limit=200)
    inside = {fact.relation_id: fact for fact in facts if fact.subject_id in members and fact.object_id in members}
    return list(inside.values())[:MAX_FACTS]
