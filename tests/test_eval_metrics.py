"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from expertrag.eval.metrics import evaluate_run


def test_perfect_and_empty_runs() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    means, per_query = evaluate_run(qrels, {"q1": {"d1": 2.0, "d9": 1.0}})
    assert per_query["q1"] == {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    assert per_query["q2"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert means["ndcg@10"] == pytest.approx(0.5)


def test_hand_computed_ndcg_and_mrr() -> None:
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": {"x": 5.0, "a": 4.0, "y": 3.0, "b": 2.0}}
    means, _ = evaluate_run(qrels, run)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert means["ndcg@10"] == pytest.approx(dcg / ideal, abs=1e-4)
    assert means["mrr@10"] == pytest.approx(0.5)
    assert means["recall@100"] == pytest.approx(1.0)


def test_graded_relevance() -> None:
    qrels = {"q": {"a": 2, "b": 1}}
    worse = evaluate_run(qrels, {"q": {"b": 2.0, "a": 1.0}})[0]["ndcg@10"]
    better = evaluate_run(qrels, {"q": {"a": 2.0, "b": 1.0}})[0]["ndcg@10"]
    assert better == pytest.approx(1.0)
    assert worse < better


def test_mrr_counts_only_top_ten() -> None:
    qrels = {"q": {"gold": 1}}
    run = {"q": {f"d{i}": 100.0 - i for i in range(10)} | {"gold": 1.0}}
    means, _ = evaluate_run(qrels, run)
    assert means["mrr@10"] == 0.0
    assert means["recall@100"] == 1.0
