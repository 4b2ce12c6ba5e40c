"""Tests of extraction scoring: data set loaders, schema mapping and strict/relaxed matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertrag.errors import CorpusFormatError, InputError
from expertrag.eval.extraction import ExtractionScores, evaluate_extraction, normalize_surface, score_record
from expertrag.eval.extraction_data import GoldEntity, GoldMention, GoldRecord, GoldRelation, load_extraction_records
from expertrag.eval.extraction_schema import DatasetSchema
from expertrag.records import Chunk, Entity, Extraction, Mention, Relation
from expertrag.settings import Settings

# The extraction sets are benchmark data outside the repository (EXPERTRAG_DATA_DIR). Where
# they are not installed, the tests that read them are skipped and the reason names the folder.
requires_extraction_data = pytest.mark.skipif(
    not (Settings().data_dir / "conll04").is_dir(),
    reason=f"extraction data sets not found under {Settings().data_dir}: set EXPERTRAG_DATA_DIR",
)

DATASETS = ("conll04", "scierc", "biored", "redocred", "webnlg2020_text2rdf")
TEXT = "John Smith works for Acme in Boston."
GOLD = GoldRecord(
    "r1",
    TEXT,
    (
        GoldEntity("0", "Peop", (GoldMention(0, 10, "John Smith"),)),
        GoldEntity("1", "Org", (GoldMention(21, 25, "Acme"),)),
        GoldEntity("2", "Loc", (GoldMention(29, 35, "Boston"),)),
    ),
    (GoldRelation("0", "Work_For", "1"), GoldRelation("1", "OrgBased_In", "2")),
)


def predicted(entities: list[tuple[str, str, int, int]], relations: list[tuple[str, str, str]]) -> Extraction:
    """Build an extraction from (name, label, start, end) mentions and (subject, predicate, object) names."""
    extraction = Extraction()
    ids = {}
    for name, label, start, end in entities:
        entity = Entity(f"e-{name}", name, label)
        ids[name] = entity.entity_id
        extraction.entities.append(entity)
        extraction.mentions.append(Mention("c", entity.entity_id, start, end, TEXT[start:end]))
    for subject, predicate, obj in relations:
        extraction.relations.append(Relation(ids[subject], predicate, ids[obj], "c", 0, len(TEXT), "test"))
    return extraction


def scores_for(extraction: Extraction) -> dict:
    scores = ExtractionScores()
    score_record(GOLD, extraction, DatasetSchema.for_dataset("conll04"), scores)
    return scores.to_dict()


@requires_extraction_data
@pytest.mark.parametrize("name", DATASETS)
def test_loaders_read_every_data_set(name: str) -> None:
    records = load_extraction_records(Settings().data_dir / name, "test", limit=3)
    assert len(records) == 3
    for record in records:
        assert record.text
        assert record.relations
        keys = {entity.key for entity in record.entities}
        for relation in record.relations:
            assert relation.head in keys
            assert relation.tail in keys
        for entity in record.entities:
            for mention in entity.mentions:
                if mention.start is not None:
                    assert record.text[mention.start:mention.end] == mention.text


@requires_extraction_data
@pytest.mark.parametrize("name", DATASETS)
def test_every_gold_label_is_in_schema(name: str) -> None:
    schema = DatasetSchema.for_dataset(name)
    records = load_extraction_records(Settings().data_dir / name, "test")
    labels = {relation.label for record in records for relation in record.relations}
    types = {entity.type for record in records for entity in record.entities}
    assert labels <= set(schema.relations)
    assert types <= set(schema.entity_types)


def test_exact_prediction_scores_one() -> None:
    extraction = predicted(
        [("John Smith", "PERSON", 0, 10), ("Acme", "ORG", 21, 25), ("Boston", "GPE", 29, 35)],
        [("John Smith", "work_for", "Acme"), ("Acme", "in", "Boston")],
    )
    result = scores_for(extraction)
    for kind in ("entities", "relations"):
        for mode in ("strict", "relaxed"):
            assert result[kind][mode]["f1"] == 1.0
    assert result["unmapped_relations"] == 0


def test_wrong_type_fails_strict_only() -> None:
    extraction = predicted([("John Smith", "ORG", 0, 10)], [])
    result = scores_for(extraction)
    assert result["entities"]["strict"]["true_positives"] == 0
    assert result["entities"]["relaxed"]["true_positives"] == 1
    assert result["entities"]["strict"]["per_type"]["Org"]["predicted"] == 1
    assert result["entities"]["strict"]["per_type"]["Peop"]["gold"] == 1


def test_shifted_span_fails_strict_only() -> None:
    extraction = predicted([("John Smith works", "PERSON", 0, 16), ("Smith", "PERSON", 5, 10)], [])
    result = scores_for(extraction)
    assert result["entities"]["strict"]["true_positives"] == 0
    assert result["entities"]["relaxed"]["true_positives"] == 0


def test_relation_argument_types_pick_label() -> None:
    # "live_in" from an organisation to a place counts as OrgBased_In, because Live_In needs a person.
    extraction = predicted([("Acme", "ORG", 21, 25), ("Boston", "GPE", 29, 35)], [("Acme", "live_in", "Boston")])
    result = scores_for(extraction)
    assert result["relations"]["relaxed"]["true_positives"] == 1
    assert result["relations"]["relaxed"]["per_type"]["OrgBased_In"]["true_positives"] == 1


def test_unmapped_predicate_counts_only_in_pairs() -> None:
    extraction = predicted([("John Smith", "PERSON", 0, 10), ("Acme", "ORG", 21, 25)], [("John Smith", "admire", "Acme")])
    result = scores_for(extraction)
    assert result["unmapped_relations"] == 1
    assert result["relations"]["relaxed"]["predicted"] == 0
    assert result["relations"]["pairs_relaxed"]["true_positives"] == 1


def test_reversed_relation_is_wrong_unless_symmetric() -> None:
    extraction = predicted([("John Smith", "PERSON", 0, 10), ("Acme", "ORG", 21, 25)], [("Acme", "Work_For", "John Smith")])
    result = scores_for(extraction)
    assert result["relations"]["relaxed"]["true_positives"] == 0
    assert result["relations"]["pairs_relaxed"]["true_positives"] == 1


def test_inverse_predicate_reverses_arguments() -> None:
    schema = DatasetSchema.for_dataset("webnlg2020_text2rdf")
    text = "Wharton Tiers produced Turn Me On."
    record = GoldRecord("w", text, (
        GoldEntity("0", "Entity", (GoldMention(None, None, "Turn_Me_On_(album)"),)),
        GoldEntity("1", "Entity", (GoldMention(None, None, "Wharton_Tiers"),)),
    ), (GoldRelation("0", "producer", "1"),))
    extraction = Extraction(
        [Entity("a", "Wharton Tiers", "PERSON"), Entity("b", "Turn Me On", "WORK_OF_ART")],
        [Mention("c", "a", 0, 13, "Wharton Tiers"), Mention("c", "b", 23, 33, "Turn Me On")],
        [Relation("a", "produce", "b", "c", 0, 33, "test")],
    )
    scores = ExtractionScores()
    score_record(record, extraction, schema, scores)
    result = scores.to_dict()
    assert result["relations"]["relaxed"]["true_positives"] == 1
    assert result["entities"]["relaxed"]["true_positives"] == 2
    assert result["entities"]["strict"]["true_positives"] == 1


def test_normalize_surface() -> None:
    assert normalize_surface("Turn_Me_On_(album)") == "turn me on"
    assert normalize_surface("The I.B.M.") == "i b m"
    assert normalize_surface('"City Manager"') == "city manager"


def test_each_gold_item_matches_once() -> None:
    extraction = predicted([("John Smith", "PERSON", 0, 10)], [])
    extraction.mentions.append(Mention("c", "e-John Smith", 0, 10, "John Smith"))
    result = scores_for(extraction)
    assert result["entities"]["strict"]["predicted"] == 1
    assert result["entities"]["strict"]["true_positives"] == 1


def test_unknown_folder_and_split(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Unknown extraction data set folder"):
        load_extraction_records(tmp_path, "test")
    with pytest.raises(InputError, match="Split file not found"):
        load_extraction_records(Settings().data_dir / "conll04", "train")


def test_bad_record_names_line(tmp_path: Path) -> None:
    folder = tmp_path / "conll04"
    folder.mkdir()
    (folder / "test.jsonl").write_text(json.dumps({"id": "1", "text": "x", "entities": [], "relations": []}) + "\n{\"id\": 2}\n")
    with pytest.raises(CorpusFormatError, match="line 2"):
        load_extraction_records(folder, "test")


def test_invalid_schema_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"entity_types": {"A": {}}, "relations": {"r": {"head": ["B"]}}}))
    with pytest.raises(InputError, match="unknown entity types"):
        DatasetSchema.load(path)


@requires_extraction_data
def test_evaluate_counts_records_and_speed() -> None:
    class EmptyExtractor:
        name = "empty"

        def extract(self, chunks: list[Chunk]) -> list[Extraction]:
            return [Extraction() for _ in chunks]

    result = evaluate_extraction(Settings().data_dir / "conll04", EmptyExtractor(), limit=5)
    data = result.to_dict()
    assert data["records"] == 5
    assert data["entities"]["strict"]["predicted"] == 0
    assert data["entities"]["strict"]["gold"] > 0
    assert data["relations"]["strict"]["recall"] == 0.0


@requires_extraction_data
def test_cli_prints_scores_and_json() -> None:
    from typer.testing import CliRunner

    from expertrag.cli import app

    folder = str(Settings().data_dir / "conll04")
    runner = CliRunner()
    text = runner.invoke(app, ["eval", "extraction", folder, "--limit", "3"])
    assert text.exit_code == 0, text.output
    assert "entities strict" in text.output
    assert "relations relaxed, per type" in text.output

    as_json = runner.invoke(app, ["eval", "extraction", folder, "--limit", "3", "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.output)
    assert payload["records"] == 3
    assert payload["extractor"] == "spacy-rules"


def test_cli_rejects_unknown_extractor() -> None:
    from typer.testing import CliRunner

    from expertrag.cli import app

    result = CliRunner().invoke(app, ["eval", "extraction", str(Settings().data_dir / "conll04"), "--extractor", "magic"])
    assert result.exit_code != 0
    assert "Invalid extractor 'magic'" in result.output
