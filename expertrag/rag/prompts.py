"""Prompts for grounded answering with numbered evidence."""

from __future__ import annotations

from collections.abc import Sequence

from expertrag.kg_build.store import Fact
from expertrag.retrievers.hits import Hit

NOT_FOUND = "NOT_FOUND"

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "citations": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["answer", "citations"],
}

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages and graph facts you are given. "
    "Answer with one complete sentence that names what the question asks for, "
    "and list the numbers of the passages that state it. "
    'Reply with JSON only, for example: {"answer": "Aspirin inhibits the enzyme cyclooxygenase.", "citations": [2]}. '
    f'If the passages do not state the answer, reply {{"answer": "{NOT_FOUND}", "citations": []}}. '
    "Never use knowledge that is not in the passages."
)


def build_messages(question: str, hits: Sequence[Hit], facts: Sequence[Fact], max_passage_chars: int = 1200) -> list[dict[str, str]]:
    """Return chat messages that carry the question, numbered passages and graph facts."""
    passages = []
    for number, hit in enumerate(hits, start=1):
        text = hit.text if len(hit.text) <= max_passage_chars else hit.text[:max_passage_chars] + " ..."
        title = f"{hit.title}: " if hit.title and not hit.text.startswith(hit.title) else ""
        passages.append(f"[{number}] {title}{text}")
    parts = ["Passages:", *passages]
    if facts:
        parts.append("Graph facts (subject | relation | object):")
        parts.extend(f"- {f.subject} | {f.predicate.replace('_', ' ')} | {f.object}" for f in facts)
    parts.append(f"Question: {question}")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(parts)},
    ]
