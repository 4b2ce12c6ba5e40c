"""Tests of the hybrid teacher and of experts distilled from it.

The lexical corpus names 40 pumps by made-up part codes. A query that contains one pump's
code but another pump's use misleads the base encoder, while BM25 matches the code, a rare
exact token. So the hybrid teacher must find the right pump more often than the encoder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from expertrag.errors import InputError
from expertrag.records import Document
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import (
    ExpertEncoders,
    ExpertRegistry,
    Recipe,
    TrainingConfig,
    TrainingData,
    load_beir_training_data,
    pseudo_query_training_data,
    train_expert,
)
from expertrag.retrievers.experts.teacher import TeacherTargets, hybrid_teacher
from expertrag.retrievers.experts.training import DEFAULT_RECIPES, PSEUDO_RECIPES, RECIPES, default_recipes
from tests.test_experts import HELD_OUT, held_out_ids, mean_ndcg, toy_data

USES = ["irrigation", "cooling towers", "fire hydrants", "breweries", "mines", "ships", "dairies", "laboratories"]


def part_code(index: int) -> str:
    rng = random.Random(index)
    return "".join(rng.choice("BDFGKMNPRTVZ") for _ in range(2)) + str(rng.randint(1000, 9999))


def pump_corpus() -> tuple[list[str], list[str], dict[str, str]]:
    """Return (document ids, document texts, {query id: query}); query ``q<i>`` names the code of pump ``p<i>``."""
    ids = [f"p{i}" for i in range(40)]
    texts = [f"Pump {part_code(i)} moves water for {USES[i % len(USES)]} and runs on a steel shaft." for i in range(40)]
    queries = {f"q{i}": f"which pump has part code {part_code(i)}" for i in range(40)}
    return ids, texts, queries


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.shared()


def test_teacher_finds_codes_encoder_misses(encoder):
    ids, texts, _ = pump_corpus()
    queries = {f"q{i}": f"pump {part_code(i)} used in {USES[(i + 3) % len(USES)]}" for i in range(40)}
    vectors = encoder.encode(texts)
    hits = {}
    for weight in (0.0, 0.3, 0.9):
        targets = hybrid_teacher(queries, texts, vectors, encoder, bm25_weight=weight)
        assert targets.query_ids == sorted(queries)
        assert targets.rows.shape == (40, 40)  # the candidate list is cut to the 40 units
        expected = [f"p{q[1:]}" for q in targets.query_ids]
        hits[weight] = sum(ids[targets.rows[i, int(np.argmax(targets.scores[i]))]] == expected[i] for i in range(40))
    dense = encoder.encode([queries[q] for q in sorted(queries)]) @ vectors.T
    dense_hits = sum(ids[int(np.argmax(dense[i]))] == f"p{q[1:]}" for i, q in enumerate(sorted(queries)))
    assert hits[0.0] == dense_hits
    assert hits[0.3] >= dense_hits + 8, f"teacher {hits}, encoder {dense_hits} of 40"
    assert hits[0.9] >= hits[0.3]


def test_bm25_score_matrix_floors_beyond_depth():
    from expertrag.retrievers.bm25 import BM25Index

    ids, texts, queries = pump_corpus()
    index = BM25Index.build(texts, ids)
    query = queries["q7"]
    matrix = index.score_matrix([query], depth=5)
    top_scores, top_ids = index.search([query], k=5)
    assert matrix.shape == (1, 40)
    assert top_ids[0][0] == "p7"
    assert np.allclose(sorted(matrix[0], reverse=True)[:5], top_scores[0])
    assert np.count_nonzero(matrix[0] == top_scores[0].min()) >= 35  # every unit beyond depth 5 gets the floor


def test_candidates_include_both_favourites(encoder):
    ids, texts, queries = pump_corpus()
    vectors = encoder.encode(texts)
    targets = hybrid_teacher(queries, texts, vectors, encoder, candidates=8)
    dense = encoder.encode([queries[q] for q in targets.query_ids]) @ vectors.T
    for position, query_id in enumerate(targets.query_ids):
        rows = targets.rows[position].tolist()
        assert len(set(rows)) == 8
        assert int(np.argmax(dense[position])) in rows
        assert int(query_id[1:]) in rows  # pump i, which BM25 finds by its code
        assert targets.scores[position].max() == targets.scores[position][rows.index(int(query_id[1:]))]


def test_teacher_targets_subset_concat_and_labels():
    targets = TeacherTargets(["a", "b"], np.array([[0, 1, 2], [2, 1, 0]]), np.array([[3.0, 2.0, 1.0], [0.5, 2.5, 1.5]]))
    assert targets.subset(["b", "x", "a"]).query_ids == ["b", "a"]
    assert targets.subset(["b"]).rows.tolist() == [[2, 1, 0]]
    other = TeacherTargets(["b", "c"], np.array([[9, 9, 9], [1, 2, 0]]), np.zeros((2, 3)))
    joined = targets.concat(other)
    assert joined.query_ids == ["a", "b", "c"]
    assert joined.rows[1].tolist() == [2, 1, 0]  # "b" keeps the first row
    # units 0 and 1 belong to document d0; a document counts once, at its best unit
    labels = targets.qrels(["d0", "d0", "d1"], depth=10)
    assert labels == {"a": {"d0": 1, "d1": 1}, "b": {"d0": 1, "d1": 1}}
    assert targets.qrels(["d0", "d1", "d2"], depth=1) == {"a": {"d0": 1}, "b": {"d1": 1}}
    with pytest.raises(ValueError, match="must match"):
        TeacherTargets(["a"], np.zeros((2, 3)), np.zeros((2, 3)))


def planted_teacher(data: TrainingData, candidates: int = 32) -> TrainingData:
    """Give every query a teacher that puts its relevant document far above random others."""
    rng = np.random.default_rng(0)
    query_ids = sorted(data.qrels)
    row_of = {doc: row for row, doc in enumerate(data.unit_documents)}
    rows = np.zeros((len(query_ids), candidates), dtype=np.int64)
    scores = np.zeros((len(query_ids), candidates), dtype=np.float32)
    for i, query_id in enumerate(query_ids):
        relevant = row_of[next(iter(data.qrels[query_id]))]
        others = [r for r in rng.permutation(len(data.unit_ids)) if r != relevant][: candidates - 1]
        rows[i] = [relevant, *others]
        scores[i, 0] = 0.5  # cosine units: far above the others at temperature 0.05
    source = {**data.source, "teacher": {"kind": "planted", "labels": "qrels"}}
    return TrainingData(data.name, data.unit_ids, data.unit_documents, data.unit_vectors, data.queries, data.qrels,
                        source, TeacherTargets(query_ids, rows, scores))


def test_distill_learns_from_teacher_alone(encoder):
    data = planted_teacher(toy_data("animals", encoder))
    held_out = set(held_out_ids(data))
    training = data.subset([q for q in sorted(data.qrels) if q not in held_out])
    config = TrainingConfig(epochs=4, batch_size=16, recipes=(Recipe("distill", 1e-3, label_weight=0.0, teacher_weight=1.0),))
    expert = train_expert("animals", training, encoder, config)
    assert expert.metrics["chosen_recipe"] == "distill"
    query_ids = held_out_ids(data)
    texts = [data.queries[q] for q in query_ids]
    encoders = ExpertEncoders(encoder)
    encoders.add("animals", expert.weights)
    base = mean_ndcg(data, query_ids, encoder.encode(texts))
    distilled = mean_ndcg(data, query_ids, encoders.encode(texts, "animals"))
    assert len(query_ids) == HELD_OUT
    assert distilled > base + 0.2, f"held-out nDCG@10 {distilled:.3f} vs base {base:.3f}"


def test_teacher_only_recipe_needs_teacher_targets(encoder):
    data = toy_data("vehicles", encoder)
    config = TrainingConfig(epochs=1, recipes=(RECIPES["distill"],))
    with pytest.raises(InputError, match="vehicles has no teacher targets"):
        train_expert("vehicles", data, encoder, config)


def test_default_recipes_follow_the_data(encoder):
    plain = toy_data("vehicles", encoder)
    labeled = planted_teacher(plain)
    pseudo = TrainingData(labeled.name, labeled.unit_ids, labeled.unit_documents, labeled.unit_vectors, labeled.queries,
                          labeled.qrels, {"teacher": {"labels": "teacher"}}, labeled.teacher)
    assert [r.name for r in default_recipes([plain])] == ["in-batch", "in-batch+hard"]
    assert default_recipes([labeled]) == DEFAULT_RECIPES
    assert default_recipes([pseudo]) == PSEUDO_RECIPES
    assert default_recipes([pseudo, labeled]) == DEFAULT_RECIPES
    assert default_recipes([pseudo, plain])[0].name == "in-batch"


def write_pump_folder(folder: Path) -> None:
    ids, texts, queries = pump_corpus()
    folder.mkdir(parents=True)
    (folder / "qrels").mkdir()
    with (folder / "corpus.jsonl").open("w") as handle:
        for doc_id, text in zip(ids, texts):
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text + " It was serviced last spring. "
                                     "Its seals are rubber."}) + "\n")
    with (folder / "queries.jsonl").open("w") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\tp{i}\t1" for i in range(40)]
    (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")


def test_sentence_pseudo_queries_take_teacher_labels(tmp_path, encoder):
    ids, texts, _ = pump_corpus()
    documents = [Document(doc_id=doc_id, text=text + " It was serviced last spring. Its seals are rubber.")
                 for doc_id, text in zip(ids, texts)]
    data = pseudo_query_training_data("pumps", documents, encoder, "sentence", max_queries=12, seed=0, cache_dir=tmp_path)
    assert len(data.queries) == 12
    assert data.source["teacher"]["labels"] == "teacher"
    assert data.teacher is not None and data.teacher.query_ids == sorted(data.queries)
    for query_id, text in data.queries.items():
        source_document = next(d for d in documents if d.doc_id == query_id.split(":", 1)[1])
        assert text in source_document.text
        assert len(data.qrels[query_id]) == 1
        assert set(data.qrels[query_id].values()) == {1}
    # a sentence that carries a part code has its own pump as the teacher's best document
    coded = [q for q, text in data.queries.items() if text.startswith("Pump ")]
    assert coded, "no sampled sentence carries a part code"
    assert all(q.split(":", 1)[1] in data.qrels[q] for q in coded)
    # the full vectors stay: sentence pseudo-queries do not re-encode documents
    assert np.allclose(data.unit_vectors, encoder.encode([d.text for d in documents]), atol=1e-5)


def test_labeled_data_survives_registry_round_trip(tmp_path, encoder):
    write_pump_folder(tmp_path / "pumps")
    data = load_beir_training_data(tmp_path / "pumps", "train", encoder, tmp_path / "cache")
    assert data.teacher is not None and data.source["teacher"]["labels"] == "qrels"
    assert data.qrels["q3"] == {"p3": 1}  # judged queries keep their qrels
    config = TrainingConfig(epochs=1, batch_size=16, min_validation_gain=-1.0)
    expert = train_expert("pumps", data, encoder, config)
    assert expert.metrics["chosen_recipe"] in {r.name for r in DEFAULT_RECIPES}
    registry = ExpertRegistry(tmp_path / "experts")
    registry.record_rejection("pumps", {"message": "an earlier run gained too little"})
    registry.record_rejection("valves", {"message": "an earlier run gained too little"})
    registry.add(expert)
    assert set(registry.rejections()) == {"valves"}  # registering "pumps" drops only its stale rejection
    (stored,) = registry.load_domains("pumps")
    assert stored.teacher is not None
    assert sorted(stored.teacher.query_ids) == sorted(data.qrels)
    for query_id in ("q0", "q17", "q39"):
        original = data.teacher.subset([query_id])
        again = stored.teacher.subset([query_id])
        assert again.rows.tolist() == original.rows.tolist()
        assert np.allclose(again.scores, original.scores)
    multitask = train_expert("multitask", [stored, data], encoder, config)
    assert multitask.metrics["chosen_recipe"] in {r.name for r in DEFAULT_RECIPES}


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--rank", "0"), ("--batch-size", "0"),
                                           ("--max-queries", "1"), ("--min-gain", "-1")])
def test_cli_train_rejects_out_of_range_options(tmp_path, option, value):
    from typer.testing import CliRunner

    from expertrag.cli_experts import experts_app

    write_pump_folder(tmp_path / "pumps")
    result = CliRunner().invoke(experts_app, ["train", "--data", str(tmp_path / "pumps"), "--experts-dir",
                                              str(tmp_path / "experts"), option, value])
    assert result.exit_code == 2
    assert option in result.output
    assert not (tmp_path / "experts").exists()
