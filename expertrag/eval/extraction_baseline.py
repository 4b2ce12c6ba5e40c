"""The first version of the rule-based spaCy extractor, kept unchanged as the baseline of extraction benchmarks.

``expertrag eval extraction --extractor spacy-rules-v1`` runs it, so the "before" column of
the extraction table can be measured again in the same run as the current extractor.
Ingestion never uses it. No LLM is involved. Entities are spaCy's named entities plus noun chunks (label
``CONCEPT``); a relation joins the entities that hold a verb's subject and object,
directly or through a preposition (``associated_with``). Every mention and relation
keeps character offsets into its document.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from expertrag.kg_build.resolution import entity_id_for, normalize_name
from expertrag.records import Chunk, Entity, Extraction, Mention, Relation

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "spacy-rules-v1"
CONCEPT = "CONCEPT"
# Entity labels that are values rather than things; they never become graph nodes.
SKIPPED_LABELS = frozenset({"CARDINAL", "ORDINAL", "PERCENT", "QUANTITY", "MONEY", "TIME", "DATE"})
SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass"})
OBJECT_DEPS = frozenset({"dobj", "attr", "oprd"})
MAX_NAME_CHARS = 80
# Single-word noun chunks that name the text itself (its sections and moves), not a domain concept.
GENERIC_CONCEPTS = frozenset(
    "result results finding findings study studies effect effects method methods data analysis analyses "
    "conclusion conclusions background objective objectives purpose aim aims evidence role case cases "
    "approach approaches paper work model models use level levels number type types group groups".split()
)


class BaselineSpacyExtractor:
    """Extract entities, mentions and relations with the first set of spaCy rules."""

    name = EXTRACTOR_NAME

    def __init__(self, nlp: Any, batch_size: int = 32) -> None:
        self.nlp = nlp
        self.batch_size = batch_size

    def extract_documents(self, texts: Sequence[str], chunk_lists: Sequence[Sequence[Chunk]]) -> list[Extraction]:
        """Parse each document once and give every mention and relation to the chunks that contain it.

        Parsing whole documents avoids parsing the overlap between chunks twice. A document
        longer than the pipeline's ``max_length`` is parsed chunk by chunk instead.
        """
        whole = [len(text) <= self.nlp.max_length for text in texts]
        docs = iter(self.nlp.pipe((t for t, fits in zip(texts, whole) if fits), batch_size=self.batch_size))
        results = []
        for chunks, fits in zip(chunk_lists, whole):
            if fits:
                results.append(self._extract(next(docs), 0, list(chunks)))
            else:
                results.append(_merge(self.extract(chunks)))
        return results

    def extract(self, chunks: Sequence[Chunk]) -> list[Extraction]:
        """Parse each chunk on its own; return one extraction per chunk."""
        docs = self.nlp.pipe((chunk.text for chunk in chunks), batch_size=self.batch_size)
        return [self._extract(doc, chunk.start, [chunk]) for chunk, doc in zip(chunks, docs)]

    def _extract(self, doc: Any, offset: int, chunks: list[Chunk]) -> Extraction:
        """Extract from a parsed text that starts at document offset ``offset`` and spans ``chunks``."""
        token_entity: dict[int, tuple[Any, Entity]] = {}
        extraction = Extraction()
        seen_entities: set[str] = set()

        for span, label in self._entity_spans(doc):
            name = span.text.strip()
            entity = Entity(entity_id_for(name, label), name, label)
            for token in span:
                token_entity[token.i] = (span, entity)
            if entity.entity_id not in seen_entities:
                seen_entities.add(entity.entity_id)
                extraction.entities.append(entity)
            start = offset + span.start_char
            end = start + len(span.text)
            for chunk in _containing(chunks, start, end):
                extraction.mentions.append(Mention(chunk.chunk_id, entity.entity_id, start, end, span.text))

        for subject_id, predicate, object_id, start, end in self._relations(doc, token_entity):
            chunk = _containing(chunks, offset + start, offset + end)[0]
            extraction.relations.append(
                Relation(subject_id, predicate, object_id, chunk.chunk_id, offset + start, offset + end, EXTRACTOR_NAME)
            )
        return extraction

    def _entity_spans(self, doc: Any) -> list[tuple[Any, str]]:
        """Named entities first, then noun chunks that overlap none of them."""
        spans: list[tuple[Any, str]] = []
        taken: set[int] = set()
        for ent in doc.ents:
            if ent.label_ in SKIPPED_LABELS or not _usable_name(ent.text):
                continue
            spans.append((ent, ent.label_))
            taken.update(range(ent.start, ent.end))
        for noun_chunk in doc.noun_chunks:
            span = _strip_determiners(noun_chunk)
            if span is None or span.root.pos_ == "PRON" or any(t.i in taken for t in span):
                continue
            if not _usable_name(span.text):
                continue
            spans.append((span, CONCEPT))
            taken.update(range(span.start, span.end))
        return spans

    def _relations(self, doc: Any, token_entity: dict[int, tuple[Any, Entity]]) -> list[tuple[str, str, str, int, int]]:
        """(subject id, predicate, object id, start, end) of each subject-verb-object link, offsets in ``doc``."""
        relations: list[tuple[str, str, str, int, int]] = []
        for token in doc:
            if token.pos_ not in ("VERB", "AUX"):
                continue
            subjects = [_entity_of(child, token_entity) for child in token.children if child.dep_ in SUBJECT_DEPS]
            subjects = [s for s in subjects if s is not None]
            if not subjects:
                continue
            objects: list[tuple[str, tuple[Any, Entity]]] = []
            for child in token.children:
                if child.dep_ in OBJECT_DEPS:
                    found = _entity_of(child, token_entity)
                    if found:
                        objects.append((token.lemma_.lower(), found))
                elif child.dep_ in ("prep", "agent"):
                    for grandchild in child.children:
                        if grandchild.dep_ == "pobj":
                            found = _entity_of(grandchild, token_entity)
                            if found:
                                objects.append((f"{token.lemma_.lower()}_{child.lower_}", found))
            for subject_span, subject in subjects:
                for predicate, (object_span, obj) in objects:
                    if subject.entity_id == obj.entity_id:
                        continue
                    start = min(subject_span.start_char, object_span.start_char, token.idx)
                    end = max(subject_span.end_char, object_span.end_char)
                    relations.append((subject.entity_id, predicate, obj.entity_id, start, end))
        return relations


def _containing(chunks: list[Chunk], start: int, end: int) -> list[Chunk]:
    """Return the chunks that contain [start, end), or else the chunk where it starts (a span across a chunk border)."""
    inside = [chunk for chunk in chunks if chunk.start <= start and end <= chunk.end]
    if inside:
        return inside
    starting = [chunk for chunk in chunks if chunk.start <= start < chunk.end]
    return starting[:1] or chunks[-1:]


def _merge(extractions: list[Extraction]) -> Extraction:
    merged = Extraction()
    for extraction in extractions:
        merged.entities.extend(extraction.entities)
        merged.mentions.extend(extraction.mentions)
        merged.relations.extend(extraction.relations)
    return merged


def _entity_of(token: Any, token_entity: dict[int, tuple[Any, Entity]]) -> tuple[Any, Entity] | None:
    """Return the entity that contains ``token``, or the one that contains a compound or modifier child of it."""
    if token.i in token_entity:
        return token_entity[token.i]
    for child in token.children:
        if child.dep_ in ("compound", "amod") and child.i in token_entity:
            return token_entity[child.i]
    return None


def _strip_determiners(span: Any) -> Any | None:
    start = span.start
    while start < span.end and span.doc[start].pos_ in ("DET", "PRON", "PUNCT"):
        start += 1
    if start >= span.end:
        return None
    return span.doc[start : span.end]


def _usable_name(text: str) -> bool:
    """Reject names that cross a line break (a title and its body), are too short or long, or are generic."""
    if "\n" in text:
        return False
    normalized = normalize_name(text)
    if normalized in GENERIC_CONCEPTS:
        return False
    return 1 < len(normalized) <= MAX_NAME_CHARS and any(ch.isalpha() for ch in normalized)
