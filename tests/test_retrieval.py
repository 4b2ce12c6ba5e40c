"""Dense, BM25, hybrid and graph retrieval over the bundled SciFact sample."""

from __future__ import annotations

import pytest

from expertrag.errors import CollectionNotFoundError, InputError
from expertrag.eval.beir import BeirDataset, run_kb_queries
from expertrag.eval.metrics import evaluate_run
from expertrag.knowledge_base import KnowledgeBase
from expertrag.retrievers.fusion import reciprocal_rank_fusion
from expertrag.sample import SAMPLE_DIR
from tests.conftest import SAMPLE_COLLECTION


@pytest.fixture(scope="module")
def sample_dataset() -> BeirDataset:
    return BeirDataset.load(SAMPLE_DIR)


@pytest.mark.parametrize(("retriever", "floor"), [("dense", 0.75), ("bm25", 0.70), ("hybrid", 0.75), ("graph", 0.70)])
def test_sample_ndcg_floor(sample_kb: KnowledgeBase, sample_dataset: BeirDataset, retriever: str, floor: float) -> None:
    run = run_kb_queries(sample_kb, SAMPLE_COLLECTION, sample_dataset, retriever, chunks=50)
    means, _ = evaluate_run(sample_dataset.qrels, run)
    print(f"{retriever}: nDCG@10 {means['ndcg@10']:.4f} over {len(sample_dataset.qrels)} sample claims")
    assert means["ndcg@10"] >= floor


def test_hits_are_real_chunks(sample_kb: KnowledgeBase) -> None:
    hits = sample_kb.retrieve("ADAR1 forms a complex with Dicer", SAMPLE_COLLECTION, k=5, retriever="hybrid")
    assert hits[0].doc_id == "5953485"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for hit in hits:
        text = sample_kb.store.document_text(hit.collection, hit.doc_id)
        assert text is not None and text[hit.start:hit.end] == hit.text
        assert set(hit.ranks) <= {"dense", "bm25"}


def test_dense_scores_are_cosines(sample_kb: KnowledgeBase) -> None:
    hits = sample_kb.retrieve("microRNA processing by Dicer", SAMPLE_COLLECTION, k=3, retriever="dense")
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    assert hits[0].score > 0.4


def test_reciprocal_rank_fusion_by_hand() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=60)
    scores = dict(fused)
    assert [item for item, _ in fused][:2] == ["b", "c"]
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["d"] == pytest.approx(1 / 63)


def test_bad_retrieval_requests(sample_kb: KnowledgeBase) -> None:
    with pytest.raises(InputError, match="Unknown retriever"):
        sample_kb.retrieve("x", SAMPLE_COLLECTION, retriever="sparse")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty"):
        sample_kb.retrieve("   ", SAMPLE_COLLECTION)
    with pytest.raises(CollectionNotFoundError, match="nope"):
        sample_kb.retrieve("x", "nope")
