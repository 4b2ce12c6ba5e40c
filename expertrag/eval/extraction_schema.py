"""Schema files that map a data set's entity types and relation labels to an extractor's vocabulary.

Each data set has ``extraction_schemas/<name>.json`` beside this module::

    {
      "entity_types": {"Peop": {"description": "...", "rules_labels": ["PERSON"]}, ...},
      "relations": {"Kill": {"description": "...", "head": ["Peop"], "tail": ["Peop"],
                             "symmetric": false, "rules_predicates": ["kill", "shoot"]}, ...},
      "match_predicate_words": false
    }

A data-set type or label always maps to itself, which is what the schema-guided LLM
extractor emits. ``rules_labels`` lists the spaCy labels that count as the type, and
``rules_predicates`` lists the rule extractor's predicates that count as the relation. Both
are ``fnmatch`` patterns, such as ``"*"`` or ``"*_of"``. ``inverse_rules_predicates`` lists predicates whose subject is the
relation's tail (``produce`` for WebNLG's ``producer``). ``head`` and ``tail`` restrict the argument types,
which picks between relations that share a predicate (``live_in`` between two places is
Located_In, not Live_In). With ``match_predicate_words``, a predicate also maps to the
label with the same words (``birth_place`` to ``birthPlace``), for open label sets such as
WebNLG's DBpedia properties.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

from expertrag.errors import InputError

SCHEMA_DIR = Path(__file__).resolve().parent / "extraction_schemas"

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class EntityTypeSpec:
    """A data-set entity type and the extractor labels that count as it."""

    name: str
    description: str
    rules_labels: tuple[str, ...]


@dataclass(frozen=True)
class RelationSpec:
    """A data-set relation label, its argument types and the extractor predicates that count as it."""

    name: str
    description: str
    head: tuple[str, ...]
    tail: tuple[str, ...]
    symmetric: bool
    rules_predicates: tuple[str, ...]
    inverse_rules_predicates: tuple[str, ...] = ()
    """Predicates whose subject is this relation's tail (``produce`` for ``producer``)."""


@dataclass(frozen=True)
class DatasetSchema:
    """The entity types and relation labels of one data set, with their mapping."""

    dataset: str
    entity_types: dict[str, EntityTypeSpec]
    relations: dict[str, RelationSpec]
    match_predicate_words: bool = False

    @classmethod
    def load(cls, path: Path) -> DatasetSchema:
        """Read a schema file. Raises InputError naming the file for a missing file or an invalid field."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"Schema file not found: {path}. Write one in the layout of {SCHEMA_DIR}/conll04.json.") from None
        except json.JSONDecodeError as error:
            raise InputError(f"Invalid JSON in schema file {path}: {error}") from None
        try:
            entity_types = {
                name: EntityTypeSpec(name, spec.get("description", ""), tuple(spec.get("rules_labels", ())))
                for name, spec in raw["entity_types"].items()
            }
            relations = {
                name: RelationSpec(
                    name,
                    spec.get("description", ""),
                    tuple(spec.get("head", ())),
                    tuple(spec.get("tail", ())),
                    bool(spec.get("symmetric", False)),
                    tuple(spec.get("rules_predicates", ())),
                    tuple(spec.get("inverse_rules_predicates", ())),
                )
                for name, spec in raw["relations"].items()
            }
        except (KeyError, AttributeError, TypeError) as error:
            raise InputError(
                f"Invalid schema file {path}: {error!r}. It needs 'entity_types' and 'relations' objects keyed by name."
            ) from None
        for relation in relations.values():
            unknown = [t for t in relation.head + relation.tail if t not in entity_types]
            if unknown:
                raise InputError(f"Invalid schema file {path}: relation {relation.name!r} names unknown entity types {unknown}.")
        return cls(raw.get("dataset", Path(path).stem), entity_types, relations, bool(raw.get("match_predicate_words", False)))

    @classmethod
    def for_dataset(cls, name: str) -> DatasetSchema:
        """Load the bundled schema of data set ``name``."""
        return cls.load(SCHEMA_DIR / f"{name}.json")

    def entity_types_of(self, label: str) -> tuple[str, ...]:
        """Return the data-set types that an extractor label counts as, in schema order."""
        if label in self.entity_types:
            return (label,)
        return tuple(
            spec.name
            for spec in self.entity_types.values()
            if any(fnmatch.fnmatchcase(label, pattern) for pattern in spec.rules_labels)
        )

    def relation_labels_of(self, predicate: str, head_label: str, tail_label: str, *, inverse: bool = False) -> tuple[str, ...]:
        """Return the data-set relation labels that ``predicate`` between the two extractor labels counts as.

        With ``inverse``, ``head_label`` and ``tail_label`` are the labels of the relation's
        head and tail, which are the predicate's object and subject, and only
        ``inverse_rules_predicates`` apply. A label whose argument types exclude the mapped
        head or tail type is left out. For a symmetric label the arguments may also come in
        the other order.
        """
        head_types = set(self.entity_types_of(head_label))
        tail_types = set(self.entity_types_of(tail_label))
        words = _predicate_words(predicate) if self.match_predicate_words and not inverse else None
        labels = []
        for spec in self.relations.values():
            if inverse:
                named = any(fnmatch.fnmatchcase(predicate, p) for p in spec.inverse_rules_predicates)
            else:
                named = predicate == spec.name or any(fnmatch.fnmatchcase(predicate, p) for p in spec.rules_predicates)
            if not named and words is not None:
                named = words == _predicate_words(spec.name)
            if not named:
                continue
            if _arguments_fit(spec, head_types, tail_types) or (spec.symmetric and _arguments_fit(spec, tail_types, head_types)):
                labels.append(spec.name)
        return tuple(labels)


def _arguments_fit(spec: RelationSpec, head_types: set[str], tail_types: set[str]) -> bool:
    head_fits = not spec.head or bool(head_types.intersection(spec.head))
    tail_fits = not spec.tail or bool(tail_types.intersection(spec.tail))
    return head_fits and tail_fits


def _predicate_words(predicate: str) -> str:
    """Return a predicate or label as lower-case words joined by one space (``birthPlace`` -> ``birth place``)."""
    spaced = _CAMEL_BOUNDARY.sub(" ", predicate)
    return _NON_ALNUM.sub(" ", spaced.lower()).strip()
