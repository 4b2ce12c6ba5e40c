"""JSON Schemas of the LLM replies in community summaries, global search and PIKE decomposition.

The backend constrains decoding with a schema, and the reply is validated with
``relaxed(schema)``, which drops ``maxItems`` so a server that ignores the schema and
lists more items is not rejected for it (the callers cap lists themselves). Short fields
come first, because a reply cut at ``max_tokens`` loses its last member, and a cut last
string is closed by the JSON repair. Strings carry no ``maxLength``: in llama-cpp-python
0.3.36 that grammar bound made a 220-token summary 1.5 to 1.7 times slower (same output,
measured on the sample KB's summary prompt, 2 shared CPU cores).
"""

from __future__ import annotations

import copy
from typing import Any

_BOUNDS = ("maxItems",)

SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "summary": {"type": "string", "minLength": 1},
    },
    "required": ["title", "summary"],
}

MAP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "answer": {"type": "string"},
    },
    "required": ["score", "answer"],
}

CITED_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "citations": {"type": "array", "items": {"type": "integer"}, "maxItems": 8},
        "answer": {"type": "string"},
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
                "items": {"type": "string", "minLength": 1},
            },
        },
        "required": ["sub_questions"],
    }


def relaxed(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``schema`` without ``maxItems``, for validating replies."""
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
