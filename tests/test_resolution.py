"""Tests of staged entity resolution: exact names, aliases (punctuation, defined acronyms, surnames), embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from expertrag.kg_build.resolution import (
    EntityResolver,
    NamedEntity,
    acronym_definitions,
    collapsed_name,
    initials,
)
from expertrag.retrievers.encoder import Encoder
from expertrag.settings import Settings

IBM_NAMES = [
    NamedEntity("a", "IBM", "ORG"),
    NamedEntity("b", "I.B.M.", "ORG"),
    NamedEntity("c", "International Business Machines", "ORG"),
]


def clusters_of(resolver: EntityResolver, entities: list[NamedEntity], texts: list[str] | None = None) -> set[frozenset[str]]:
    return {frozenset(cluster) for cluster in resolver.resolve(entities, texts or []).clusters}


def test_alias_helpers() -> None:
    assert collapsed_name("I.B.M.") == "ibm"
    assert initials("International Business Machines") == "ibm"
    assert initials("Bank of America") == "ba"
    assert initials("IBM") == ""


def test_acronym_definitions_need_matching_initials() -> None:
    text = "International Business Machines (IBM) grew. Later he joined IBM (then small). WHO (World Health Organization) met."
    assert acronym_definitions(text) == {
        ("International Business Machines", "IBM"),
        ("World Health Organization", "WHO"),
    }


def test_punctuation_variant_merges_without_definition() -> None:
    resolver = EntityResolver(stages=("exact", "alias"))
    assert clusters_of(resolver, IBM_NAMES) == {frozenset({"a", "b"}), frozenset({"c"})}


def test_long_form_merges_when_text_defines_acronym() -> None:
    resolver = EntityResolver(stages=("exact", "alias"))
    texts = ["International Business Machines (IBM) sells computers."]
    assert clusters_of(resolver, IBM_NAMES, texts) == {frozenset({"a", "b", "c"})}


def test_long_form_stays_apart_when_text_lacks_definition() -> None:
    resolver = EntityResolver(stages=("exact", "alias"))
    texts = ["IBM sells computers. International Business Machines was founded in 1911."]
    assert clusters_of(resolver, IBM_NAMES, texts) == {frozenset({"a", "b"}), frozenset({"c"})}


def test_different_label_groups_never_merge() -> None:
    resolver = EntityResolver(stages=("exact", "alias"))
    entities = [NamedEntity("a", "IBM", "ORG"), NamedEntity("b", "I.B.M.", "PERSON")]
    assert clusters_of(resolver, entities, ["International Business Machines (IBM)"]) == {
        frozenset({"a"}), frozenset({"b"})}


def test_alias_stage_off_keeps_variants_apart() -> None:
    resolver = EntityResolver(stages=("exact",))
    entities = [*IBM_NAMES, NamedEntity("d", "the IBM", "ORG")]
    assert clusters_of(resolver, entities, ["International Business Machines (IBM)"]) == {
        frozenset({"a", "d"}), frozenset({"b"}), frozenset({"c"})}


def test_surname_merges_only_when_unambiguous() -> None:
    resolver = EntityResolver(stages=("exact", "alias"))
    unique = [NamedEntity("a", "Robyn Fenty", "PERSON"), NamedEntity("b", "Fenty", "PERSON")]
    assert clusters_of(resolver, unique) == {frozenset({"a", "b"})}
    shared = [NamedEntity("a", "John Adams", "PERSON"), NamedEntity("b", "Samuel Adams", "PERSON"),
              NamedEntity("c", "Adams", "PERSON")]
    assert clusters_of(resolver, shared) == {frozenset({"a"}), frozenset({"b"}), frozenset({"c"})}


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    settings = Settings()
    return Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)


def test_embedding_threshold_controls_merge(encoder: Encoder) -> None:
    entities = [NamedEntity("a", "International Business Machines", "ORG"),
                NamedEntity("b", "International Business Machines Corporation", "ORG"),
                NamedEntity("c", "Banana Republic", "ORG")]
    vectors = encoder.encode([e.name for e in entities])
    similarity = float(vectors[0] @ vectors[1])
    assert similarity > 0.8

    loose = EntityResolver(encoder.encode, threshold=similarity - 0.01)
    assert clusters_of(loose, entities) == {frozenset({"a", "b"}), frozenset({"c"})}
    strict = EntityResolver(encoder.encode, threshold=min(1.0, similarity + 0.01))
    assert clusters_of(strict, entities) == {frozenset({"a"}), frozenset({"b"}), frozenset({"c"})}


def test_embedding_skips_value_types() -> None:
    def same_vector(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 2), dtype=np.float32) / np.sqrt(2)

    entities = [NamedEntity("a", "2010", "TIME"), NamedEntity("b", "2011", "TIME"),
                NamedEntity("c", "Loud", "MISC"), NamedEntity("d", "Loud Tour", "MISC")]
    result = EntityResolver(same_vector, threshold=0.5).resolve(entities)
    assert {frozenset(c) for c in result.clusters} == {frozenset({"a"}), frozenset({"b"}), frozenset({"c", "d"})}
    assert result.merges_by_stage == {"exact": 0, "alias": 0, "embedding": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"threshold": 1.5}, "threshold"), ({"stages": ("exact", "fuzzy")}, "stages")],
)
def test_invalid_resolver_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EntityResolver(**kwargs)


def test_duplicate_keys_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        EntityResolver().resolve([NamedEntity("a", "IBM", "ORG"), NamedEntity("a", "IBM", "ORG")])
