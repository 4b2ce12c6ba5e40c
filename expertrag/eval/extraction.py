"""Score an extractor's entities and relations against gold triples, strictly and relaxed.

Strict matching needs the exact character span (the exact surface string on WebNLG,
which has no offsets) and a predicted label that the data set's schema maps to the
gold type. Relaxed matching compares normalized text and ignores entity types, but a
relation still needs a mapped label. Matching is one-to-one, so a gold item is found at
most once and precision and recall share one true-positive count.

A relation argument matches a gold entity when it matches any of the entity's mentions,
so on BioRED and Re-DocRED, where gold relations join coreference clusters, finding a
relation once anywhere in the document is enough. Predicted relations whose predicate
the schema does not map are left out of the typed relation scores and counted as
``unmapped``. The untyped ``pairs`` score keeps them and ignores labels and direction.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from expertrag.eval.extraction_data import GoldRecord, dataset_name, load_extraction_records
from expertrag.eval.extraction_schema import DatasetSchema
from expertrag.records import Chunk, Extraction, Mention
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

UNMAPPED = "(unmapped)"
UNTYPED_RELATION = "(untyped)"
EXTRACTOR_NAMES = ("spacy-rules", "spacy-rules-v1", "llm")
# Records given to the extractor per call, so spaCy's nlp.pipe can batch them.
EXTRACT_BATCH = 32

_PARENTHETICAL = re.compile(r"\s*\([^)]*\)\s*$")
_ARTICLE = re.compile(r"^(the|a|an)\s+")
_NON_WORD = re.compile(r"[^\w]+")


class ChunkExtractor(Protocol):
    """An extractor that turns chunks into one ``Extraction`` each."""

    name: str

    def extract(self, chunks: Sequence[Chunk]) -> list[Extraction]:
        """Extract from each chunk."""
        ...


def normalize_surface(text: str) -> str:
    """Return the relaxed comparison key of a name.

    NFKC, underscores as spaces (WebNLG's DBpedia names), a trailing parenthetical
    qualifier dropped (``Turn_Me_On_(album)``), lower case, no leading article, and
    punctuation removed (``I.B.M.`` becomes ``i b m``).
    """
    value = unicodedata.normalize("NFKC", text).replace("_", " ").strip().strip('"')
    value = _PARENTHETICAL.sub("", value).lower()
    value = _ARTICLE.sub("", value)
    return _NON_WORD.sub(" ", value).strip()


def exact_surface(text: str) -> str:
    """Return the strict comparison key of a name without offsets: the text with underscores as spaces."""
    return text.replace("_", " ").strip()


@dataclass
class TypeCounts:
    """True positives, predictions and gold items of one type."""

    true_positives: int = 0
    predicted: int = 0
    gold: int = 0

    def add(self, other: TypeCounts) -> None:
        self.true_positives += other.true_positives
        self.predicted += other.predicted
        self.gold += other.gold

    def scores(self) -> dict[str, float | int]:
        """Precision, recall and F1 (0.0 where undefined) with the counts behind them."""
        precision = self.true_positives / self.predicted if self.predicted else 0.0
        recall = self.true_positives / self.gold if self.gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "true_positives": self.true_positives,
                "predicted": self.predicted, "gold": self.gold}


@dataclass
class MatchCounts:
    """Counts of one matching mode, in total and per data-set type or label."""

    per_type: dict[str, TypeCounts] = field(default_factory=dict)

    def of(self, name: str) -> TypeCounts:
        return self.per_type.setdefault(name, TypeCounts())

    def total(self) -> TypeCounts:
        total = TypeCounts()
        for counts in self.per_type.values():
            total.add(counts)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.total().scores(),
            "per_type": {name: counts.scores() for name, counts in sorted(self.per_type.items())},
        }


@dataclass(frozen=True)
class _GoldItem:
    keys: tuple[Any, ...]
    """Matching key: a span or text for an entity mention, (head key, tail key) for a relation."""
    type: str
    symmetric: bool = False


@dataclass(frozen=True)
class _PredictedItem:
    heads: frozenset[Any]
    tails: frozenset[Any]
    types: tuple[str, ...]
    """Data-set types or labels this prediction counts as; empty matches any (untyped modes)."""
    unmatched_type: str = UNMAPPED
    """Type under which the prediction counts when it matches nothing."""


def _match(gold: list[_GoldItem], predicted: list[_PredictedItem], counts: MatchCounts) -> None:
    """Match predictions to gold items one to one, in prediction order, and add the outcome to ``counts``."""
    matched = [False] * len(gold)
    for item in gold:
        counts.of(item.type).gold += 1
    for prediction in predicted:
        hit = None
        for index, item in enumerate(gold):
            if matched[index] or (prediction.types and item.type not in prediction.types):
                continue
            head, tail = item.keys
            forward = head in prediction.heads and tail in prediction.tails
            backward = item.symmetric and head in prediction.tails and tail in prediction.heads
            if forward or backward:
                hit = index
                break
        if hit is None:
            counts.of(prediction.unmatched_type).predicted += 1
            continue
        matched[hit] = True
        gold_type = counts.of(gold[hit].type)
        gold_type.predicted += 1
        gold_type.true_positives += 1


@dataclass
class ExtractionScores:
    """Entity and relation counts of one extractor on one data set, summed over records."""

    entities_strict: MatchCounts = field(default_factory=MatchCounts)
    entities_relaxed: MatchCounts = field(default_factory=MatchCounts)
    relations_strict: MatchCounts = field(default_factory=MatchCounts)
    relations_relaxed: MatchCounts = field(default_factory=MatchCounts)
    relation_pairs_relaxed: MatchCounts = field(default_factory=MatchCounts)
    unmapped_relations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "entities": {"strict": self.entities_strict.to_dict(), "relaxed": self.entities_relaxed.to_dict()},
            "relations": {
                "strict": self.relations_strict.to_dict(),
                "relaxed": self.relations_relaxed.to_dict(),
                "pairs_relaxed": self.relation_pairs_relaxed.to_dict(),
            },
            "unmapped_relations": self.unmapped_relations,
        }


def score_record(record: GoldRecord, extraction: Extraction, schema: DatasetSchema, scores: ExtractionScores) -> None:
    """Add the matches of one record's extraction against its gold entities and relations to ``scores``."""
    has_offsets = all(m.start is not None for entity in record.entities for m in entity.mentions)
    labels = {entity.entity_id: entity.label for entity in extraction.entities}
    mentions = _unique_mentions(extraction.mentions)

    def strict_key(start: int | None, end: int | None, text: str) -> Any:
        return (start, end) if has_offsets else exact_surface(text)

    # Entities: strict on span (or exact surface) and type, relaxed on normalized text alone.
    gold_strict = [
        _GoldItem((strict_key(m.start, m.end, m.text), None), entity.type)
        for entity in record.entities
        for m in entity.mentions
    ]
    predicted_strict = []
    for m in mentions:
        types = schema.entity_types_of(labels.get(m.entity_id, "")) or (UNMAPPED,)
        predicted_strict.append(_PredictedItem(frozenset([strict_key(m.start, m.end, m.text)]), frozenset([None]),
                                               types, types[0]))
    _match(gold_strict, predicted_strict, scores.entities_strict)

    gold_texts: dict[str, str] = {}
    for entity in record.entities:
        for m in entity.mentions:
            gold_texts.setdefault(normalize_surface(m.text), entity.type)
    predicted_texts: dict[str, tuple[str, ...]] = {}
    for m in mentions:
        predicted_texts.setdefault(normalize_surface(m.text), schema.entity_types_of(labels.get(m.entity_id, "")))
    _match(
        [_GoldItem((text, None), kind) for text, kind in gold_texts.items() if text],
        [_PredictedItem(frozenset([text]), frozenset([None]), (), (types or (UNMAPPED,))[0])
         for text, types in predicted_texts.items() if text],
        scores.entities_relaxed,
    )

    # Relations: each argument resolves to the gold entities whose mentions it matches.
    strict_owner: dict[Any, set[str]] = {}
    relaxed_owner: dict[str, set[str]] = {}
    for entity in record.entities:
        for m in entity.mentions:
            strict_owner.setdefault(strict_key(m.start, m.end, m.text), set()).add(entity.key)
            relaxed_owner.setdefault(normalize_surface(m.text), set()).add(entity.key)
    gold_relations = [
        _GoldItem((relation.head, relation.tail), relation.label,
                  relation.label in schema.relations and schema.relations[relation.label].symmetric)
        for relation in record.relations
    ]

    strict_predictions: dict[tuple[Any, ...], _PredictedItem] = {}
    relaxed_predictions: dict[tuple[Any, ...], _PredictedItem] = {}
    pair_predictions: dict[tuple[Any, ...], _PredictedItem] = {}
    by_entity: dict[str, list[Mention]] = {}
    for m in mentions:
        by_entity.setdefault(m.entity_id, []).append(m)
    for relation in extraction.relations:
        head = _argument_mention(by_entity.get(relation.subject_id, []), relation.start, relation.end)
        tail = _argument_mention(by_entity.get(relation.object_id, []), relation.start, relation.end)
        if head is None or tail is None:
            continue
        head_text, tail_text = normalize_surface(head.text), normalize_surface(tail.text)
        pair_predictions.setdefault(
            (head_text, tail_text),
            _PredictedItem(frozenset(relaxed_owner.get(head_text, ())), frozenset(relaxed_owner.get(tail_text, ())), (),
                           UNTYPED_RELATION),
        )
        head_label, tail_label = labels.get(relation.subject_id, ""), labels.get(relation.object_id, "")
        readings = [
            (head, tail, schema.relation_labels_of(relation.predicate, head_label, tail_label)),
            (tail, head, schema.relation_labels_of(relation.predicate, tail_label, head_label, inverse=True)),
        ]
        if not any(types for _, _, types in readings):
            scores.unmapped_relations += 1
            continue
        for first, second, types in readings:
            if not types:
                continue
            first_text, second_text = normalize_surface(first.text), normalize_surface(second.text)
            first_key = strict_key(first.start, first.end, first.text)
            second_key = strict_key(second.start, second.end, second.text)
            strict_predictions.setdefault(
                (first_key, types, second_key),
                _PredictedItem(frozenset(strict_owner.get(first_key, ())), frozenset(strict_owner.get(second_key, ())),
                               types, types[0]),
            )
            relaxed_predictions.setdefault(
                (first_text, types, second_text),
                _PredictedItem(frozenset(relaxed_owner.get(first_text, ())), frozenset(relaxed_owner.get(second_text, ())),
                               types, types[0]),
            )
    _match(gold_relations, list(strict_predictions.values()), scores.relations_strict)
    _match(gold_relations, list(relaxed_predictions.values()), scores.relations_relaxed)
    undirected = [_GoldItem(item.keys, item.type, True) for item in gold_relations]
    _match(undirected, list(pair_predictions.values()), scores.relation_pairs_relaxed)


def _unique_mentions(mentions: Sequence[Mention]) -> list[Mention]:
    """Return mentions without the copies that overlapping chunks produce, in text order."""
    seen: dict[tuple[str, int, int], Mention] = {}
    for mention in mentions:
        seen.setdefault((mention.entity_id, mention.start, mention.end), mention)
    return sorted(seen.values(), key=lambda m: (m.start, m.end))


def _argument_mention(candidates: list[Mention], start: int, end: int) -> Mention | None:
    """Return the entity's mention inside the relation's span [start, end), else its first mention."""
    for mention in candidates:
        if start <= mention.start and mention.end <= end:
            return mention
    return candidates[0] if candidates else None


@dataclass
class ExtractionResult:
    """Scores and speed of one extractor on one data set split."""

    dataset: str
    split: str
    extractor: str
    records: int
    seconds: float
    scores: ExtractionScores
    failed_chunks: int = 0

    @property
    def documents_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "extractor": self.extractor,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "documents_per_second": round(self.documents_per_second, 3),
            "failed_chunks": self.failed_chunks,
            **self.scores.to_dict(),
        }


def evaluate_extraction(
    dataset_dir: Path,
    extractor: ChunkExtractor,
    *,
    split: str = "test",
    limit: int | None = None,
    schema: DatasetSchema | None = None,
) -> ExtractionResult:
    """Run ``extractor`` on every record of a data set split, one chunk per record, and score it.

    Only extraction time counts towards documents per second; loading and scoring do not.
    """
    name = dataset_name(dataset_dir)
    schema = schema or DatasetSchema.for_dataset(name)
    records = load_extraction_records(dataset_dir, split, limit)
    scores = ExtractionScores()
    seconds = 0.0
    logger.info("extracting %d %s records with %s", len(records), name, extractor.name)
    for offset in range(0, len(records), EXTRACT_BATCH):
        batch = records[offset : offset + EXTRACT_BATCH]
        chunks = [Chunk(f"{record.record_id}#0", record.record_id, name, 0, 0, len(record.text), record.text, 0)
                  for record in batch]
        started = time.perf_counter()
        extractions = extractor.extract(chunks)
        seconds += time.perf_counter() - started
        for record, extraction in zip(batch, extractions):
            score_record(record, extraction, schema, scores)
    failed = int(getattr(extractor, "failed_chunks", 0))
    logger.info("scored %s on %s in %.1f s of extraction", extractor.name, name, seconds)
    return ExtractionResult(name, split, extractor.name, len(records), seconds, scores, failed)


def create_extractor(name: str, settings: Settings, schema: DatasetSchema | None = None) -> ChunkExtractor:
    """Create the extractor ``name`` (one of ``EXTRACTOR_NAMES``); the LLM extractor is guided by ``schema``."""
    from expertrag.kg_build.extraction import SpacyExtractor, load_spacy

    if name == "spacy-rules":
        return SpacyExtractor(load_spacy(settings.spacy_model), settings.spacy_batch_size)
    if name == "spacy-rules-v1":
        from expertrag.eval.extraction_baseline import BaselineSpacyExtractor

        return BaselineSpacyExtractor(load_spacy(settings.spacy_model), settings.spacy_batch_size)
    if name == "llm":
        from expertrag.eval.extraction_llm import llm_extractor_for

        return llm_extractor_for(settings, schema)
    raise ValueError(f"Invalid extractor {name!r}: use one of {', '.join(EXTRACTOR_NAMES)}.")


def format_result(result: ExtractionResult) -> str:
    """Return a plain-text report: totals, then per-type strict and relaxed scores."""
    data = result.to_dict()
    lines = [
        f"{result.dataset} ({result.split}, {result.records} records) with {result.extractor}: "
        f"{result.documents_per_second:.2f} documents/s",
        f"{'':<28}{'P':>8}{'R':>8}{'F1':>8}{'pred':>8}{'gold':>8}",
    ]
    for kind in ("entities", "relations"):
        for mode in ("strict", "relaxed"):
            values = data[kind][mode]
            lines.append(f"{kind + ' ' + mode:<28}{values['precision']:>8.3f}{values['recall']:>8.3f}{values['f1']:>8.3f}"
                         f"{values['predicted']:>8}{values['gold']:>8}")
    pairs = data["relations"]["pairs_relaxed"]
    lines.append(f"{'relation pairs (untyped)':<28}{pairs['precision']:>8.3f}{pairs['recall']:>8.3f}{pairs['f1']:>8.3f}"
                 f"{pairs['predicted']:>8}{pairs['gold']:>8}")
    lines.append(f"predicted relations with no mapped label: {data['unmapped_relations']}")
    if result.failed_chunks:
        lines.append(f"chunks whose LLM output could not be parsed: {result.failed_chunks}")
    for kind in ("entities", "relations"):
        for mode in ("strict", "relaxed"):
            lines.append(f"\n{kind} {mode}, per type")
            for type_name, values in data[kind][mode]["per_type"].items():
                lines.append(f"  {type_name[:38]:<40}{values['precision']:>8.3f}{values['recall']:>8.3f}"
                             f"{values['f1']:>8.3f}{values['predicted']:>8}{values['gold']:>8}")
    return "\n".join(lines)
