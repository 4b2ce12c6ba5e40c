"""JSON Schemas of the LLM replies in community summaries, global search and PIKE decomposition.

Each schema is used twice. The backend constrains decoding with it: llama-cpp-python
0.3.36 turns ``maxLength`` and ``maxItems`` into grammar bounds, so a string closes before
the reply reaches ``max_tokens`` and the JSON stays whole. The reply is then validated with
``relaxed(schema)``, which drops those bounds, so a server that ignores the schema and
writes a longer string is not rejected for it. Short fields come first, because a
reply cut at ``max_tokens`` loses its last member.
"""

from __future__ import annotations

import copy
from typing import Any

_BOUNDS = ("maxLength", "maxItems")

SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 100},
        "summary": {"type": "string", "minLength": 1, "maxLength": 500},
    },
    "required": ["title", "summary"],
}

MAP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "answer": {"type": "string", "maxLength": 400},
    },
    "required": ["score", "answer"],
}

CITED_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "citations": {"type": "array", "items": {"type": "integer"}, "maxItems": 8},
        "answer": {"type": "string", "maxLength": 500},
    },
    "required": ["citations", "answer"],
}


def decompose_schema(max_sub_questions: int) -> dict[str, Any]:
    """Return the schema of a decomposition reply with at most ``max_sub_questions`` items."""
    return {
        "type": "object",
        "properties": {
            "sub_questions": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_sub_questions,
                "items": {"type": "string", "minLength": 1, "maxLength": 160},
            },
        },
        "required": ["sub_questions"],
    }


def relaxed(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``schema`` without ``maxLength`` and ``maxItems``, for validating replies."""
    copied = copy.deepcopy(schema)
    stack: list[Any] = [copied]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for bound in _BOUNDS:
                node.pop(bound, None)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return copied
