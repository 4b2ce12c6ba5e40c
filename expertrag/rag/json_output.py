"""Parsing of the JSON that LLMs return: repair of the usual damage, then JSON Schema validation.

Small local models wrap JSON in code fences or prose, leave trailing commas and stop in
the middle of an object when they reach their token limit; ``parse_json_output`` mends
these before it validates.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import jsonschema

from expertrag.errors import LLMError
from expertrag.rag.llm import shorten

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
# Candidate start positions ('{') tried before giving up, so a long reply stays cheap.
_MAX_JSON_STARTS = 20
# Places to cut a truncated object back to, latest first, before giving up on it.
_MAX_CUT_POINTS = 50
_CLOSERS = {"{": "}", "[": "]"}


def parse_json_output(text: str, schema: dict | None = None) -> dict:
    """Extract the JSON object from an LLM reply, repairing common damage, and validate it.

    Repairs Markdown code fences, prose before or after the object, trailing commas, raw
    control characters inside strings, and output cut off mid-object: open strings,
    arrays and objects are closed, and an incomplete last member is dropped. Returns the
    first top-level object (never one nested inside another) that is valid for ``schema``,
    or the first one when no schema is given.

    Raises LLMError, with a shortened copy of ``text``, when no such object can be
    recovered.
    """
    if text is None or not text.strip():
        raise LLMError("LLM output is empty, but a JSON object was expected.")

    body = _strip_code_fence(text)
    validator = _validator_for(schema)
    decoder = json.JSONDecoder(strict=False)
    problems: list[str] = []

    search_from = 0
    for _ in range(_MAX_JSON_STARTS):
        start = body.find("{", search_from)
        if start < 0:
            break

        try:
            value, end = decoder.raw_decode(body, start)
            consumed = end - start
        except json.JSONDecodeError as error:
            repaired = _repair_json(body[start:], decoder)
            if repaired is None:
                problems.append(f"invalid JSON at character {start}: {error.msg}")
                search_from = start + 1
                continue
            candidate, consumed = repaired
            value = decoder.decode(candidate)
            logger.debug("repaired LLM JSON output %s into %s", shorten(body[start:]), shorten(candidate))

        # The objects nested inside this one are its members, so the search resumes after it.
        search_from = start + consumed
        if validator is None:
            return value
        schema_error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if schema_error is None:
            return value
        problems.append(f"object does not match the schema: {schema_error.message} at {schema_error.json_path}")

    problem = problems[0] if problems else "no '{' found"
    raise LLMError(f"LLM output contains no usable JSON object ({problem}). Output: {shorten(text)!r}")


def _strip_code_fence(text: str) -> str:
    """Return the first Markdown code block that contains '{', or ``text`` without one."""
    for match in _FENCE.finditer(text):
        if "{" in match.group(1):
            return match.group(1)
    return text


def _validator_for(schema: dict | None) -> jsonschema.protocols.Validator | None:
    """Return a validator for ``schema``. Raises jsonschema.SchemaError for an invalid schema."""
    if schema is None:
        return None
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _repair_json(text: str, decoder: json.JSONDecoder) -> tuple[str, int] | None:
    """Repair the JSON object that starts ``text``, which begins with '{'.

    Removes trailing commas and scans to the end of the object. When the text ends (or a
    bracket does not match) before the object closes, the open string and brackets are
    closed. If that is not valid JSON, the text is cut back to a comma or opening bracket,
    dropping the incomplete member, and closed again.

    Returns the repaired JSON and the number of characters of ``text`` it covers, or None
    when nothing decodes.
    """
    output: list[str] = []
    stack: list[str] = []
    # Places where cutting the text leaves only complete members: (length of output, stack).
    cut_points: list[tuple[int, tuple[str, ...]]] = []
    in_string = False
    escaped = False
    consumed = len(text)

    for index, char in enumerate(text):
        if in_string:
            output.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue

        if char in "{[":
            stack.append(char)
            output.append(char)
            cut_points.append((len(output), tuple(stack)))
            continue
        if char in "}]":
            if not stack or _CLOSERS[stack[-1]] != char:
                consumed = index
                break
            _drop_trailing_comma(output)
            stack.pop()
            output.append(char)
            if not stack:
                candidate = "".join(output)
                return (candidate, index + 1) if _decode_or_none(candidate, decoder) is not None else None
            continue

        if char == '"':
            in_string = True
        elif char == ",":
            cut_points.append((len(output), tuple(stack)))
        output.append(char)

    # The text ended, or broke off at a wrong bracket, before the object closed.
    if in_string:
        if escaped:
            output.pop()
        output.append('"')
    candidates = [(output, tuple(stack))]
    for length, open_brackets in reversed(cut_points[-_MAX_CUT_POINTS:]):
        # Cutting back to the outer '{' would turn any damaged text into {}.
        if length > 1:
            candidates.append((output[:length], open_brackets))

    for prefix, open_brackets in candidates:
        closed = list(prefix)
        _drop_trailing_comma(closed)
        closed.extend(_CLOSERS[bracket] for bracket in reversed(open_brackets))
        candidate = "".join(closed)
        # An empty object keeps nothing of the output, so it counts as a failure.
        if _decode_or_none(candidate, decoder):
            return candidate, consumed
    return None


def _decode_or_none(candidate: str, decoder: json.JSONDecoder) -> Any:
    try:
        return decoder.decode(candidate)
    except json.JSONDecodeError:
        return None


def _drop_trailing_comma(output: list[str]) -> None:
    """Remove a ',' (and the whitespace after it) from the end of ``output``."""
    index = len(output) - 1
    while index >= 0 and output[index].isspace():
        index -= 1
    if index >= 0 and output[index] == ",":
        del output[index:]
