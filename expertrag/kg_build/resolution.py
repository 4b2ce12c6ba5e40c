"""Entity resolution: mentions with the same normalized name and type become one entity, and a staged
resolver merges entities further by alias and name-embedding similarity."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from expertrag.records import content_id

_LEADING_ARTICLE = re.compile(r"^(the|a|an|this|these|those|its|their|our)\s+", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w\s\-+/.%]")
_SPACES = re.compile(r"\s+")

# spaCy labels that name the same kind of thing are resolved together.
LABEL_GROUPS = {"GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "NORP": "NORP", "ORG": "ORG", "PERSON": "PERSON"}


def normalize_name(name: str) -> str:
    """Return the comparison key of an entity name: NFKC, lower case, no article or stray punctuation."""
    text = unicodedata.normalize("NFKC", name).lower().strip()
    text = _LEADING_ARTICLE.sub("", text)
    text = _NON_WORD.sub(" ", text)
    text = _SPACES.sub(" ", text).strip(" .-")
    return text


def entity_key(name: str, label: str) -> tuple[str, str]:
    """Return the (normalized name, label group) pair that identifies an entity."""
    return normalize_name(name), LABEL_GROUPS.get(label, label)


def entity_id_for(name: str, label: str) -> str:
    """Return the entity id shared by every mention with the same normalized name and type."""
    normalized, group = entity_key(name, label)
    return content_id(normalized, group)


# ----------------------------------------------------------------------------- staged resolution
#
# The functions above give every mention a key from its normalized name. The resolver below
# merges entities that those keys keep apart, in three stages: exact (same key), alias
# (punctuation variants such as "I.B.M.", acronyms defined in a text, a person's surname)
# and name-embedding similarity above a threshold. Entities of different label groups
# never merge.

_ACRONYM_DEFINITION = re.compile(r"([A-Z][\w&'.-]*(?:\s+[\w&'.-]+){1,7})\s+\(\s*([A-Z][A-Za-z.&]{1,9})\s*\)")
_REVERSED_DEFINITION = re.compile(r"\b([A-Z][A-Z.&]{1,9})\s+\(\s*([A-Z][\w&'.-]*(?:\s+[\w&'.-]+){1,7})\s*\)")
# Label groups of values: "2010" and "2011" embed close together but never name one thing.
VALUE_GROUPS = frozenset({"TIME", "NUM", "DATE", "CARDINAL", "ORDINAL", "PERCENT", "QUANTITY", "MONEY"})
# Words an acronym usually skips ("Bank of America" is BoA or BA).
_ACRONYM_STOPWORDS = frozenset({"of", "the", "and", "for", "in", "on", "at", "to", "&"})


@dataclass(frozen=True)
class NamedEntity:
    """An entity to resolve: a caller-chosen unique key, its name and its label."""

    key: str
    name: str
    label: str


def label_group(label: str) -> str:
    """Return the group of labels that may name the same kind of thing (GPE and LOC are one group)."""
    return LABEL_GROUPS.get(label, label)


def collapsed_name(name: str) -> str:
    """Return the name with case, accents' forms and every non-alphanumeric character removed ("I.B.M." -> "ibm")."""
    return re.sub(r"[^0-9a-z]", "", unicodedata.normalize("NFKC", name).lower())


def initials(name: str) -> str:
    """Return the lower-case initials of a multi-word name's significant words, or "" for a one-word name."""
    words = [w for w in re.split(r"[\s\-]+", name.strip()) if w and w.lower() not in _ACRONYM_STOPWORDS]
    if len(words) < 2:
        return ""
    return "".join(w[0] for w in words if w[0].isalnum()).lower()


def acronym_definitions(text: str) -> set[tuple[str, str]]:
    """Return (long form, acronym) pairs that ``text`` defines, as in "International Business Machines (IBM)".

    A pair counts only when the acronym's letters are the initials of the long form's last
    words, so "He joined IBM (then small)" defines nothing.
    """
    pairs: set[tuple[str, str]] = set()
    for long_form, acronym in _ACRONYM_DEFINITION.findall(text):
        found = _defined_long_form(long_form, acronym)
        if found:
            pairs.add((found, acronym))
    for acronym, long_form in _REVERSED_DEFINITION.findall(text):
        if collapsed_name(acronym) == initials(long_form):
            pairs.add((long_form, acronym))
    return pairs


def _defined_long_form(candidate: str, acronym: str) -> str | None:
    """Return the trailing words of ``candidate`` whose initials spell ``acronym``, or None."""
    letters = collapsed_name(acronym)
    words = candidate.split()
    for start in range(len(words) - 1, -1, -1):
        tail = " ".join(words[start:])
        if initials(tail) == letters:
            return tail
    return None


@dataclass
class ResolutionResult:
    """Clusters of entity keys, and the stage that made each merge."""

    clusters: list[list[str]]
    merges_by_stage: dict[str, int]


class EntityResolver:
    """Merge entities in stages: exact name, alias, then name-embedding similarity.

    ``encode`` maps names to unit vectors (for example ``Encoder.encode``); without it the
    embedding stage is skipped. Two entities merge in the embedding stage when the cosine
    similarity of their names is at least ``threshold``. Merges are transitive (union-find),
    so a chain of similar names can join names that are not similar to each other.
    """

    STAGES = ("exact", "alias", "embedding")

    def __init__(self, encode: Any = None, threshold: float = 0.9, stages: Sequence[str] = STAGES) -> None:
        unknown = [stage for stage in stages if stage not in self.STAGES]
        if unknown:
            raise ValueError(f"Invalid resolution stages {unknown}: use {', '.join(self.STAGES)}.")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"Invalid similarity threshold {threshold}: use a value from 0 to 1.")
        self.encode = encode
        self.threshold = threshold
        self.stages = tuple(stages)

    def resolve(self, entities: Sequence[NamedEntity], texts: Sequence[str] = ()) -> ResolutionResult:
        """Cluster ``entities``. Acronyms merge with a long form only when one of ``texts`` defines them."""
        keys = [entity.key for entity in entities]
        if len(set(keys)) != len(keys):
            raise ValueError("Entity keys must be unique: give each entity to resolve its own key.")
        parent = list(range(len(entities)))
        merges = {stage: 0 for stage in self.stages}

        def find(index: int) -> int:
            while parent[index] != index:
                parent[index] = parent[parent[index]]
                index = parent[index]
            return index

        def union(first: int, second: int, stage: str) -> None:
            root_first, root_second = find(first), find(second)
            if root_first != root_second:
                parent[max(root_first, root_second)] = min(root_first, root_second)
                merges[stage] += 1

        groups = [label_group(entity.label) for entity in entities]
        if "exact" in self.stages:
            self._merge_equal_keys(entities, groups, [normalize_name(e.name) for e in entities], "exact", union)
        if "alias" in self.stages:
            self._merge_equal_keys(entities, groups, [collapsed_name(e.name) for e in entities], "alias", union)
            self._merge_acronyms(entities, groups, texts, union)
            self._merge_surnames(entities, groups, union)
        if "embedding" in self.stages and self.encode is not None and len(entities) > 1:
            self._merge_similar(entities, groups, union)

        clusters: dict[int, list[str]] = {}
        for index, entity in enumerate(entities):
            clusters.setdefault(find(index), []).append(entity.key)
        return ResolutionResult(list(clusters.values()), merges)

    @staticmethod
    def _merge_equal_keys(entities: Sequence[NamedEntity], groups: list[str], names: list[str], stage: str, union: Any) -> None:
        first_of: dict[tuple[str, str], int] = {}
        for index, name in enumerate(names):
            if not name:
                continue
            first = first_of.setdefault((name, groups[index]), index)
            if first != index:
                union(first, index, stage)

    @staticmethod
    def _merge_acronyms(entities: Sequence[NamedEntity], groups: list[str], texts: Sequence[str], union: Any) -> None:
        """Merge an acronym with its long form when a text defines the pair and both have the same label group."""
        defined: set[tuple[str, str]] = set()
        for text in texts:
            defined.update((normalize_name(long), collapsed_name(short)) for long, short in acronym_definitions(text))
        if not defined:
            return
        by_long: dict[tuple[str, str], list[int]] = {}
        by_short: dict[tuple[str, str], list[int]] = {}
        for index, entity in enumerate(entities):
            by_long.setdefault((normalize_name(entity.name), groups[index]), []).append(index)
            by_short.setdefault((collapsed_name(entity.name), groups[index]), []).append(index)
        for (long_name, group), long_indices in by_long.items():
            for defined_long, acronym in defined:
                if defined_long != long_name:
                    continue
                for short_index in by_short.get((acronym, group), []):
                    union(long_indices[0], short_index, "alias")

    @staticmethod
    def _merge_surnames(entities: Sequence[NamedEntity], groups: list[str], union: Any) -> None:
        """Merge a one-word PERSON name with the one multi-word PERSON name that ends with it ("Fenty", "Robyn Fenty").

        A surname shared by two full names ("John Adams", "Samuel Adams") merges with neither.
        """
        full_names: dict[str, list[int]] = {}
        for index, entity in enumerate(entities):
            words = normalize_name(entity.name).split()
            if groups[index] == "PERSON" and len(words) > 1:
                full_names.setdefault(words[-1], []).append(index)
        for index, entity in enumerate(entities):
            words = normalize_name(entity.name).split()
            if groups[index] != "PERSON" or len(words) != 1:
                continue
            owners = full_names.get(words[0], [])
            distinct = {normalize_name(entities[owner].name) for owner in owners}
            if len(distinct) == 1:
                union(owners[0], index, "alias")

    def _merge_similar(self, entities: Sequence[NamedEntity], groups: list[str], union: Any) -> None:
        """Merge entities of one label group, other than value groups, whose name vectors have cosine similarity >= threshold."""
        import numpy as np

        vectors = np.asarray(self.encode([entity.name for entity in entities]), dtype=np.float32)
        by_group: dict[str, list[int]] = {}
        for index, group in enumerate(groups):
            by_group.setdefault(group, []).append(index)
        # Rows of the similarity matrix computed at once, which bounds its memory.
        block = 1024
        for group, indices in by_group.items():
            if len(indices) < 2 or group in VALUE_GROUPS:
                continue
            group_vectors = vectors[indices]
            for offset in range(0, len(indices), block):
                similarity = group_vectors[offset : offset + block] @ group_vectors.T
                rows, columns = np.nonzero(similarity >= self.threshold)
                for row, column in zip(rows.tolist(), columns.tolist()):
                    if offset + row < column:
                        union(indices[offset + row], indices[column], "embedding")
