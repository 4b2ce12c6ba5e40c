"""Schema-guided knowledge-graph extraction with an LLM: entities and relations of given types, as JSON.

The schema (entity types and relation patterns) comes from a JSON file or is inferred
by the LLM from a sample of texts. Each chunk gets one request whose reply is
constrained to a JSON Schema with the schema's types as enums where the backend
supports it (a llama.cpp grammar in-process, ``response_format`` on OpenAI-compatible
servers). The reply is then repaired and validated, because a reply cut at
``max_tokens`` is incomplete JSON and a server may ignore the constraint. A chunk whose
reply cannot be used is logged with its id and counted, and extraction goes on.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertrag.errors import InputError, LLMError
from expertrag.kg_build.resolution import entity_id_for, normalize_name
from expertrag.rag.llm import LLMBackend, parse_json_output, shorten
from expertrag.records import Chunk, Entity, Extraction, Mention, Relation

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "llm-schema"
MAX_NAME_CHARS = 120


@dataclass(frozen=True)
class RelationPattern:
    """A relation label with the entity types its head and tail may have (empty: any type)."""

    label: str
    head: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ExtractionSchema:
    """Entity types (name to description) and relation patterns that guide the LLM."""

    entity_types: dict[str, str]
    relations: tuple[RelationPattern, ...]

    def __post_init__(self) -> None:
        if not self.entity_types:
            raise InputError("The extraction schema has no entity types. Give at least one entity type.")
        for pattern in self.relations:
            unknown = [t for t in pattern.head + pattern.tail if t not in self.entity_types]
            if unknown:
                raise InputError(f"Relation {pattern.label!r} of the extraction schema names unknown entity types {unknown}.")

    @classmethod
    def from_file(cls, path: Path) -> ExtractionSchema:
        """Read a schema file: ``entity_types`` and ``relations`` objects keyed by name.

        Each entity type maps to a description string or to an object with ``description``.
        Each relation maps to an object with optional ``description``, ``head`` and ``tail``
        (lists of entity types). Other keys, such as an evaluation's mapping fields, are
        ignored. Raises InputError naming the file when it is missing or invalid.
        """
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls.from_dict(raw)
        except FileNotFoundError:
            raise InputError(f"Extraction schema file not found: {path}.") from None
        except json.JSONDecodeError as error:
            raise InputError(f"Invalid JSON in extraction schema file {path}: {error}") from None
        except (KeyError, TypeError, AttributeError) as error:
            raise InputError(
                f"Invalid extraction schema file {path}: {error!r}. It needs 'entity_types' and 'relations' objects."
            ) from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExtractionSchema:
        """Build a schema from the parsed layout that ``from_file`` reads."""
        entity_types = {
            name: spec if isinstance(spec, str) else spec.get("description", "")
            for name, spec in raw["entity_types"].items()
        }
        relations = tuple(
            RelationPattern(label, tuple(spec.get("head", ())), tuple(spec.get("tail", ())), spec.get("description", ""))
            for label, spec in raw["relations"].items()
        )
        return cls(entity_types, relations)

    def output_schema(self) -> dict[str, Any]:
        """Return the JSON Schema of a reply, with entity types and relation labels as enums."""
        relation_item: dict[str, Any] = {
            "type": "object",
            "properties": {"head": {"type": "string"}, "relation": {"type": "string"}, "tail": {"type": "string"}},
            "required": ["head", "relation", "tail"],
        }
        if self.relations:
            relation_item["properties"]["relation"]["enum"] = [p.label for p in self.relations]
        return {
            "type": "object",
            "properties": {
                "entities": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "type": {"type": "string", "enum": list(self.entity_types)}},
                        "required": ["name", "type"],
                    },
                },
                "relations": {"type": "array", "items": relation_item},
            },
            "required": ["entities", "relations"],
        }

    def describe(self) -> str:
        """Return the schema as prompt text: one line per entity type and per relation."""
        lines = ["Entity types:"]
        lines += [f"- {name}: {description}" if description else f"- {name}" for name, description in self.entity_types.items()]
        lines.append("Relation types (head type -> tail type):")
        for pattern in self.relations:
            head = "/".join(pattern.head) or "any"
            tail = "/".join(pattern.tail) or "any"
            suffix = f": {pattern.description}" if pattern.description else ""
            lines.append(f"- {pattern.label} ({head} -> {tail}){suffix}")
        return "\n".join(lines)


GENERIC_SCHEMA = ExtractionSchema(
    {
        "Person": "a person",
        "Organization": "a company, institution, agency or group",
        "Location": "a place",
        "Concept": "any other named thing, substance, method or idea",
    },
    (
        RelationPattern("works_for", ("Person",), ("Organization",)),
        RelationPattern("located_in", (), ("Location",)),
        RelationPattern("part_of"),
        RelationPattern("causes"),
        RelationPattern("treats"),
        RelationPattern("uses"),
        RelationPattern("related_to"),
    ),
)
"""Fallback used when a schema cannot be inferred."""

_SYSTEM_PROMPT = (
    "You extract a knowledge graph from a text. Use only these types.\n{schema}\n\n"
    "Reply with one JSON object: {{\"entities\": [{{\"name\": ..., \"type\": ...}}], "
    "\"relations\": [{{\"head\": ..., \"relation\": ..., \"tail\": ...}}]}}. Copy each name exactly as it is "
    "written in the text. Every head and tail must be the name of a listed entity. List only facts the text states."
)

_INFERENCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "entity_types": {
            "type": "array",
            "maxItems": 8,
            "items": {"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
                      "required": ["name"]},
        },
        "relations": {
            "type": "array",
            "maxItems": 12,
            "items": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "head": {"type": "string"}, "tail": {"type": "string"}},
                "required": ["label"],
            },
        },
    },
    "required": ["entity_types", "relations"],
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\- ]{0,40}$")


def infer_schema(backend: LLMBackend, texts: Sequence[str], *, max_chars: int = 3000) -> ExtractionSchema:
    """Ask the LLM for the entity types and relations that fit a sample of ``texts``.

    The sample is cut to ``max_chars`` characters. Types and labels that are not short
    identifiers are dropped, and relation ends that name an unknown type become "any".
    Returns ``GENERIC_SCHEMA`` when the reply is unusable or the call fails.
    """
    sample = "\n---\n".join(texts)[:max_chars]
    messages = [
        {"role": "system", "content": (
            "You design knowledge-graph schemas. Given sample texts, list up to 8 entity types and up to 12 "
            "relation types (snake_case labels, with head and tail entity types) that describe their facts. "
            "Reply with JSON: {\"entity_types\": [{\"name\": ..., \"description\": ...}], "
            "\"relations\": [{\"label\": ..., \"head\": ..., \"tail\": ...}]}."
        )},
        {"role": "user", "content": f"Sample texts:\n{sample}"},
    ]
    try:
        reply = backend.complete(messages, max_tokens=512, json_schema=_INFERENCE_SCHEMA)
        raw = parse_json_output(reply, _INFERENCE_SCHEMA)
    except LLMError as error:
        logger.warning("schema inference failed, using the generic schema: %s", error)
        return GENERIC_SCHEMA

    entity_types = {}
    for item in raw["entity_types"]:
        name = str(item.get("name", "")).strip()
        if _NAME.match(name):
            entity_types.setdefault(name, str(item.get("description", "")))
    relations = {}
    for item in raw["relations"]:
        label = str(item.get("label", "")).strip()
        if not _NAME.match(label):
            continue
        head = str(item.get("head", "")).strip()
        tail = str(item.get("tail", "")).strip()
        relations.setdefault(label, RelationPattern(
            label, (head,) if head in entity_types else (), (tail,) if tail in entity_types else ()))
    if not entity_types:
        logger.warning("schema inference returned no usable entity types, using the generic schema")
        return GENERIC_SCHEMA
    schema = ExtractionSchema(entity_types, tuple(relations.values()))
    logger.info("inferred a schema with %d entity types and %d relations", len(entity_types), len(relations))
    return schema


@dataclass
class ParseReport:
    """Counts and reasons of the items that validation dropped from one reply."""

    dropped_entities: int = 0
    dropped_relations: int = 0
    notes: list[str] = field(default_factory=list)


class LLMExtractor:
    """Extract entities and relations of a schema's types from chunks with an LLM backend.

    ``failed_chunks`` counts chunks whose reply could not be parsed (or whose request
    failed), and ``failed_chunk_ids`` lists them. Such a chunk yields an empty extraction.
    """

    def __init__(self, backend: LLMBackend, schema: ExtractionSchema, *, max_tokens: int = 512) -> None:
        self.backend = backend
        self.schema = schema
        self.max_tokens = max_tokens
        self.name = f"{EXTRACTOR_NAME}:{backend.name}"
        self.failed_chunks = 0
        self.failed_chunk_ids: list[str] = []
        self._system_prompt = _SYSTEM_PROMPT.format(schema=schema.describe())
        self._output_schema = schema.output_schema()
        self._type_by_key = {name.lower(): name for name in schema.entity_types}
        self._label_by_key = {_label_key(p.label): p.label for p in schema.relations}

    def extract(self, chunks: Sequence[Chunk]) -> list[Extraction]:
        """Extract from each chunk with one LLM request; return one extraction per chunk."""
        return [self.extract_chunk(chunk) for chunk in chunks]

    def extract_documents(self, texts: Sequence[str], chunk_lists: Sequence[Sequence[Chunk]]) -> list[Extraction]:
        """Extract chunk by chunk and merge each document's chunks, matching ``SpacyExtractor.extract_documents``."""
        results = []
        for chunks in chunk_lists:
            merged = Extraction()
            for extraction in self.extract(chunks):
                merged.entities.extend(extraction.entities)
                merged.mentions.extend(extraction.mentions)
                merged.relations.extend(extraction.relations)
            results.append(merged)
        return results

    def extract_chunk(self, chunk: Chunk) -> Extraction:
        """Extract from one chunk. A failed request or an unusable reply is logged, counted and gives an empty extraction."""
        messages = [
            {"role": "system", "content": self._system_prompt},
            {"role": "user", "content": f"Text:\n{chunk.text}"},
        ]
        try:
            reply = self.backend.complete(messages, max_tokens=self.max_tokens, json_schema=self._output_schema)
            extraction, report = self.parse_reply(reply, chunk)
        except LLMError as error:
            self.failed_chunks += 1
            self.failed_chunk_ids.append(chunk.chunk_id)
            logger.warning("LLM extraction failed for chunk %s of document %s: %s", chunk.chunk_id, chunk.doc_id, error)
            return Extraction()
        if report.dropped_entities or report.dropped_relations:
            logger.debug("chunk %s: dropped %d entities and %d relations (%s)", chunk.chunk_id,
                         report.dropped_entities, report.dropped_relations, "; ".join(report.notes[:5]))
        return extraction

    def parse_reply(self, reply: str, chunk: Chunk) -> tuple[Extraction, ParseReport]:
        """Repair and validate one reply into an extraction over ``chunk``.

        Entity types and relation labels are matched without regard to case and
        punctuation. An entity whose name does not occur in the chunk text, or whose type
        the schema lacks, is dropped. A relation end that names no listed entity but occurs
        in the text becomes an entity (see ``_implied_type``). Raises LLMError when the reply contains no JSON object with the expected lists.
        """
        raw = parse_json_output(reply)
        entities_raw = raw.get("entities", [])
        relations_raw = raw.get("relations", [])
        if not isinstance(entities_raw, list) or not isinstance(relations_raw, list):
            raise LLMError(f"LLM reply has no 'entities' and 'relations' lists: {shorten(reply)!r}")

        report = ParseReport()
        extraction = Extraction()
        by_name: dict[str, tuple[Entity, list[Mention]]] = {}

        def add_entity(name: str, entity_type: str) -> tuple[Entity, list[Mention]] | None:
            key = normalize_name(name)
            if key in by_name:
                return by_name[key]
            mentions_at = _find_mentions(chunk.text, name)
            if not mentions_at:
                report.dropped_entities += 1
                report.notes.append(f"entity {name!r} not in the text")
                return None
            # The name as the text writes it: the model may change its case ("Penicillin").
            start, end = mentions_at[0]
            name = chunk.text[start:end]
            entity = Entity(entity_id_for(name, entity_type), name, entity_type)
            mentions = [Mention(chunk.chunk_id, entity.entity_id, chunk.start + start, chunk.start + end,
                                chunk.text[start:end]) for start, end in mentions_at]
            by_name[key] = (entity, mentions)
            extraction.entities.append(entity)
            extraction.mentions.extend(mentions)
            return by_name[key]

        for item in entities_raw:
            name, entity_type = _text_field(item, "name"), _text_field(item, "type")
            canonical_type = self._type_by_key.get((entity_type or "").lower())
            if not name or canonical_type is None:
                report.dropped_entities += 1
                report.notes.append(f"invalid entity {shorten(json.dumps(item), 80)}")
                continue
            add_entity(name, canonical_type)

        patterns = {p.label: p for p in self.schema.relations}
        seen: set[tuple[str, str, str]] = set()
        for item in relations_raw:
            head_name, tail_name = _text_field(item, "head"), _text_field(item, "tail")
            label = self._label_by_key.get(_label_key(_text_field(item, "relation") or ""))
            if not head_name or not tail_name or label is None:
                report.dropped_relations += 1
                report.notes.append(f"invalid relation {shorten(json.dumps(item), 80)}")
                continue
            pattern = patterns[label]
            head = by_name.get(normalize_name(head_name)) or add_entity(head_name, self._implied_type(pattern.head))
            tail = by_name.get(normalize_name(tail_name)) or add_entity(tail_name, self._implied_type(pattern.tail))
            if head is None or tail is None or head[0].entity_id == tail[0].entity_id:
                report.dropped_relations += 1
                report.notes.append(f"relation {head_name!r} {label} {tail_name!r} lacks a listed entity")
                continue
            key = (head[0].entity_id, label, tail[0].entity_id)
            if key in seen:
                continue
            seen.add(key)
            start, end = _closest_span(head[1], tail[1])
            extraction.relations.append(Relation(head[0].entity_id, label, tail[0].entity_id, chunk.chunk_id,
                                                 start, end, self.name))
        return extraction, report


    def _implied_type(self, allowed: tuple[str, ...]) -> str:
        """Return the type of a relation end that the reply did not list as an entity.

        Small models often name a relation's tail without listing it. The end gets the
        pattern's first allowed type, or the schema's first type when the pattern allows any,
        so the relation is kept. NOTE: that type is a guess whenever more than one type fits.
        """
        return allowed[0] if allowed else next(iter(self.schema.entity_types))


def _text_field(item: Any, key: str) -> str | None:
    if not isinstance(item, dict):
        return None
    value = item.get(key)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_NAME_CHARS else None


def _label_key(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", label.lower())


def _find_mentions(text: str, name: str) -> list[tuple[int, int]]:
    """Return the (start, end) offsets of ``name`` in ``text``: exact matches, else matches that ignore case."""
    pattern = re.escape(name)
    bounded = rf"(?<!\w){pattern}(?!\w)"
    spans = [(m.start(), m.end()) for m in re.finditer(bounded, text)]
    if not spans:
        spans = [(m.start(), m.end()) for m in re.finditer(bounded, text, flags=re.IGNORECASE)]
    return spans


def _closest_span(heads: list[Mention], tails: list[Mention]) -> tuple[int, int]:
    """Return the span from the closest pair of head and tail mentions, which is where the fact is most likely stated."""
    best = min(((h, t) for h in heads for t in tails), key=lambda pair: abs(pair[0].start - pair[1].start))
    return min(best[0].start, best[1].start), max(best[0].end, best[1].end)
