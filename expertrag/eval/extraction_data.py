"""Loaders of the extraction benchmarks (text with gold entities and triples) into one gold format.

Five layouts are read: CoNLL04, SciERC, BioRED, Re-DocRED and WebNLG 2020 Text-to-RDF.
Every record becomes a ``GoldRecord`` whose entities group their mentions (one mention
for sentence-level sets, every coreferent mention for BioRED and Re-DocRED) and whose
relations join entity keys, so one scorer serves all five.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from expertrag.errors import CorpusFormatError, InputError

logger = logging.getLogger(__name__)

# Type given to WebNLG entities, which the data set names but does not type.
UNTYPED = "Entity"


@dataclass(frozen=True)
class GoldMention:
    """One occurrence of a gold entity; offsets are None where the data set gives none (WebNLG)."""

    start: int | None
    end: int | None
    text: str


@dataclass(frozen=True)
class GoldEntity:
    """A gold entity: a key unique in its record, a data-set type and its mentions."""

    key: str
    type: str
    mentions: tuple[GoldMention, ...]


@dataclass(frozen=True)
class GoldRelation:
    """A gold relation between two entity keys of the same record."""

    head: str
    label: str
    tail: str


@dataclass(frozen=True)
class GoldRecord:
    """One text with its gold entities and relations."""

    record_id: str
    text: str
    entities: tuple[GoldEntity, ...]
    relations: tuple[GoldRelation, ...]


def load_extraction_records(dataset_dir: Path, split: str = "test", limit: int | None = None) -> list[GoldRecord]:
    """Read ``<dataset_dir>/<split>.jsonl`` and convert each line with the loader of the data set's layout.

    The layout is chosen by the folder name (``conll04``, ``scierc``, ``biored``,
    ``redocred``, ``webnlg2020_text2rdf``). ``limit`` keeps the first records of the file.
    Raises InputError for an unknown folder or a missing split, and CorpusFormatError,
    with the line number, for a line that does not fit the layout.
    """
    name = dataset_name(dataset_dir)
    path = Path(dataset_dir) / f"{split}.jsonl"
    if not path.is_file():
        available = sorted(p.stem for p in Path(dataset_dir).glob("*.jsonl"))
        raise InputError(f"Split file not found: {path}. Available splits: {', '.join(available) or 'none'}.")

    convert = LOADERS[name]
    records = []
    for line_number, raw in _numbered_lines(path):
        if limit is not None and len(records) >= limit:
            break
        try:
            records.append(convert(json.loads(raw)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
            raise CorpusFormatError(
                str(path), line_number, f"Invalid {name} record: {error!r}",
                "Each line must be a JSON object in the layout described in the data README.",
            ) from None
    logger.info("loaded %d %s records from %s", len(records), name, path)
    return records


def dataset_name(dataset_dir: Path) -> str:
    """Return the layout name of ``dataset_dir`` (its folder name). Raises InputError when no loader reads that layout."""
    name = Path(dataset_dir).name
    if name not in LOADERS:
        raise InputError(
            f"Unknown extraction data set folder {str(dataset_dir)!r}: the folder name must be one of "
            f"{', '.join(sorted(LOADERS))}."
        )
    return name


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def _single_mention_record(row: dict[str, Any]) -> GoldRecord:
    """CoNLL04 and SciERC: every entity is one mention and relations index the ``entities`` list."""
    entities = tuple(
        GoldEntity(str(index), entity["type"], (GoldMention(entity["start"], entity["end"], entity["text"]),))
        for index, entity in enumerate(row["entities"])
    )
    relations = tuple(
        GoldRelation(str(relation["head"]), relation["type"], str(relation["tail"])) for relation in row["relations"]
    )
    return GoldRecord(str(row["id"]), row["text"], entities, relations)


def _biored_record(row: dict[str, Any]) -> GoldRecord:
    """BioRED: mentions with one database identifier form an entity; relations join identifiers."""
    mentions: dict[str, list[GoldMention]] = {}
    types: dict[str, str] = {}
    for mention in row["entities"]:
        identifier = str(mention["identifier"])
        mentions.setdefault(identifier, []).append(GoldMention(mention["start"], mention["end"], mention["text"]))
        types.setdefault(identifier, mention["type"])
    entities = tuple(GoldEntity(key, types[key], tuple(found)) for key, found in mentions.items())
    relations = tuple(
        GoldRelation(str(relation["arg1"]), relation["type"], str(relation["arg2"]))
        for relation in row["relations"]
        if str(relation["arg1"]) in mentions and str(relation["arg2"]) in mentions
    )
    return GoldRecord(str(row["id"]), row["text"], entities, relations)


def _redocred_record(row: dict[str, Any]) -> GoldRecord:
    """Re-DocRED: each entity lists its coreferent mentions; relations name Wikidata properties."""
    entities = tuple(
        GoldEntity(
            str(entity["id"]),
            entity["type"],
            tuple(GoldMention(m["start"], m["end"], m["text"]) for m in entity["mentions"]),
        )
        for entity in row["entities"]
    )
    relations = tuple(
        GoldRelation(str(relation["head"]), relation["relation"], str(relation["tail"])) for relation in row["relations"]
    )
    return GoldRecord(str(row["id"]), row["text"], entities, relations)


def _webnlg_record(row: dict[str, Any]) -> GoldRecord:
    """WebNLG: entities are the DBpedia-style names of the triples, with no offsets and no type."""
    keys: dict[str, str] = {}
    for subject, _, obj in row["triples"]:
        for name in (subject, obj):
            keys.setdefault(name, str(len(keys)))
    entities = tuple(GoldEntity(key, UNTYPED, (GoldMention(None, None, name),)) for name, key in keys.items())
    relations = tuple(GoldRelation(keys[subject], predicate, keys[obj]) for subject, predicate, obj in row["triples"])
    return GoldRecord(str(row["id"]), row["text"], entities, relations)


LOADERS: dict[str, Callable[[dict[str, Any]], GoldRecord]] = {
    "conll04": _single_mention_record,
    "scierc": _single_mention_record,
    "biored": _biored_record,
    "redocred": _redocred_record,
    "webnlg2020_text2rdf": _webnlg_record,
}
