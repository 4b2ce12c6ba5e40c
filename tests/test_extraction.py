"""Rule-based extraction with spaCy and entity resolution."""

from __future__ import annotations

import pytest

from expertrag.kg_build.extraction import CONCEPT, SpacyExtractor, load_spacy
from expertrag.kg_build.resolution import entity_id_for, normalize_name
from expertrag.records import Chunk
from expertrag.settings import Settings


@pytest.fixture(scope="module")
def extractor() -> SpacyExtractor:
    return SpacyExtractor(load_spacy(Settings().spacy_model))


def make_chunk(text: str, offset: int = 0) -> Chunk:
    return Chunk("c1", "d1", "test", 0, offset, offset + len(text), text, 0)


def test_named_entities_and_concepts(extractor: SpacyExtractor) -> None:
    extraction = extractor.extract([make_chunk("Alexander Fleming discovered penicillin in London.")])[0]
    labels = {e.name: e.label for e in extraction.entities}
    assert labels["Alexander Fleming"] == "PERSON"
    assert labels["London"] == "GPE"
    assert labels["penicillin"] == CONCEPT


def test_subject_verb_object_relation(extractor: SpacyExtractor) -> None:
    text = "Alexander Fleming discovered penicillin in London."
    extraction = extractor.extract([make_chunk(text)])[0]
    names = {e.entity_id: e.name for e in extraction.entities}
    triples = {(names[r.subject_id], r.predicate, names[r.object_id]) for r in extraction.relations}
    assert ("Alexander Fleming", "discover", "penicillin") in triples


@pytest.mark.parametrize(
    ("text", "triple"),
    [
        ("Frederick Banting worked in Toronto.", ("Frederick Banting", "work_in", "Toronto")),
        ("The patients were treated with metformin.", ("patients", "treat_with", "metformin")),
        ("Statins reduce cholesterol in the liver.", ("Statins", "reduce_in", "liver")),
    ],
)
def test_prepositional_relation(extractor: SpacyExtractor, text: str, triple: tuple[str, str, str]) -> None:
    extraction = extractor.extract([make_chunk(text)])[0]
    names = {e.entity_id: e.name for e in extraction.entities}
    assert triple in {(names[r.subject_id], r.predicate, names[r.object_id]) for r in extraction.relations}


def test_offsets_point_into_the_document(extractor: SpacyExtractor) -> None:
    prefix = "Title line\n\n"
    text = "Metformin activates AMPK in liver cells."
    document_text = prefix + text
    extraction = extractor.extract([make_chunk(text, offset=len(prefix))])[0]
    assert extraction.mentions
    for mention in extraction.mentions:
        assert document_text[mention.start:mention.end] == mention.text
    for relation in extraction.relations:
        span = document_text[relation.start:relation.end]
        assert relation.chunk_id == "c1"
        assert span.startswith("Metformin")


def test_numbers_and_pronouns_are_not_entities(extractor: SpacyExtractor) -> None:
    extraction = extractor.extract([make_chunk("It rose by 25% in 2019 to 3,000 patients.")])[0]
    names = {e.name.lower() for e in extraction.entities}
    assert "it" not in names
    assert "25%" not in names
    assert "2019" not in names


def test_resolution_merges_surface_variants() -> None:
    assert normalize_name("The  Aspirin.") == "aspirin"
    assert entity_id_for("Aspirin", "CONCEPT") == entity_id_for("the aspirin", "CONCEPT")
    assert entity_id_for("Paris", "GPE") == entity_id_for("Paris", "LOC")
    assert entity_id_for("Paris", "GPE") != entity_id_for("Paris", "PERSON")


def test_same_entity_in_two_chunks_gets_one_id(extractor: SpacyExtractor) -> None:
    first, second = extractor.extract([
        make_chunk("Insulin regulates blood glucose."),
        Chunk("c2", "d2", "test", 0, 0, 26, "The insulin dose was low.", 0),
    ])
    ids_first = {e.entity_id for e in first.entities if e.name.lower() == "insulin"}
    ids_second = {e.entity_id for e in second.entities if "insulin" in e.name.lower()}
    assert ids_first
    assert ids_first == {entity_id_for("insulin", CONCEPT)}
    assert ids_second.isdisjoint(ids_first) or ids_second == ids_first


def test_document_parse_assigns_mentions_to_every_containing_chunk(extractor: SpacyExtractor) -> None:
    text = "Insulin regulates blood glucose. Frederick Banting worked in Toronto. Metformin activates AMPK."
    middle = text.index("Frederick")
    end_of_first = text.index(" Metformin")
    first = Chunk("k1", "d", "test", 0, 0, end_of_first, text[:end_of_first], 0)
    second = Chunk("k2", "d", "test", 1, middle, len(text), text[middle:], 0)
    extraction = extractor.extract_documents([text], [[first, second]])[0]

    chunks_of = {}
    for mention in extraction.mentions:
        assert text[mention.start:mention.end] == mention.text
        chunks_of.setdefault(mention.text, set()).add(mention.chunk_id)
    assert chunks_of["Insulin"] == {"k1"}
    assert chunks_of["Toronto"] == {"k1", "k2"}
    assert chunks_of["Metformin"] == {"k2"}

    by_predicate = {r.predicate: r for r in extraction.relations}
    assert by_predicate["work_in"].chunk_id == "k1"
    assert by_predicate["activate"].chunk_id == "k2"
    for relation in extraction.relations:
        chunk = first if relation.chunk_id == "k1" else second
        assert chunk.start <= relation.start < relation.end <= chunk.end


def test_document_and_chunk_parses_agree(extractor: SpacyExtractor) -> None:
    text = "Alexander Fleming discovered penicillin in London."
    chunk = make_chunk(text)
    whole = extractor.extract_documents([text], [[chunk]])[0]
    alone = extractor.extract([chunk])[0]
    assert whole.mentions == alone.mentions
    assert whole.relations == alone.relations


def triples_of(extractor: SpacyExtractor, text: str) -> set[tuple[str, str, str]]:
    extraction = extractor.extract([make_chunk(text)])[0]
    names = {e.entity_id: e.name for e in extraction.entities}
    return {(names[r.subject_id], r.predicate, names[r.object_id]) for r in extraction.relations}


def test_passive_agent_becomes_subject(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "The album was produced by Wharton Tiers.")
    assert ("Wharton Tiers", "produce", "album") in triples
    assert ("album", "produce_by", "Wharton Tiers") not in triples


def test_passive_with_preposition_keeps_subject(extractor: SpacyExtractor) -> None:
    assert ("Rihanna", "bear_in", "Barbados") in triples_of(extractor, "Rihanna was born in Barbados.")


def test_apposition_with_relational_noun(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "John Smith, president of IBM, spoke on Monday.")
    assert ("John Smith", "president_of", "IBM") in triples
    assert ("John Smith", "be", "president") in triples


def test_apposition_between_places(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "He grew up in Dallas, Texas.")
    assert ("Dallas", "located_in", "Texas") in triples


def test_copula_with_relational_noun(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "Paris is the capital of France.")
    assert ("Paris", "capital_of", "France") in triples
    assert ("Paris", "be", "capital") in triples


def test_copula_attribute_of_owner(extractor: SpacyExtractor) -> None:
    assert ("Trane", "location", "Swords") in triples_of(extractor, "The location of Trane is Swords.")


def test_relative_clause_subject_is_modified_noun(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "Police arrested John Wilkes Booth, who killed Abraham Lincoln.")
    assert ("John Wilkes Booth", "kill", "Abraham Lincoln") in triples


def test_participle_with_agent(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "Turn Me On is an album produced by Wharton Tiers.")
    assert ("Wharton Tiers", "produce", "album") in triples


def test_coordinated_subjects_each_get_relation(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "Alexander Fleming and Howard Florey discovered penicillin.")
    assert ("Alexander Fleming", "discover", "penicillin") in triples
    assert ("Howard Florey", "discover", "penicillin") in triples


def test_pronoun_resolves_to_earlier_person(extractor: SpacyExtractor) -> None:
    text = "Rihanna was born in Barbados. She moved to New York."
    extraction = extractor.extract([make_chunk(text)])[0]
    names = {e.entity_id: e.name for e in extraction.entities}
    moves = [r for r in extraction.relations if r.predicate == "move_to"]
    assert [(names[r.subject_id], names[r.object_id]) for r in moves] == [("Rihanna", "New York")]
    assert text[moves[0].start:moves[0].end].startswith("Rihanna")


def test_pronoun_without_antecedent_is_dropped(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "She moved to New York.")
    assert not any(obj == "New York" for _, _, obj in triples)


def test_preposition_between_named_entities(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "Lincoln was shot at the Ford Theatre in Washington.")
    assert ("Ford Theatre", "located_in", "Washington") in triples


def test_named_modifier_of_person(extractor: SpacyExtractor) -> None:
    triples = triples_of(extractor, "Chevron's Jonathan Lifa declined to comment.")
    assert ("Jonathan Lifa", "of", "Chevron") in triples
