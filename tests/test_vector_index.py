"""FAISS vector index: exact search, HNSW recall against exact search, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expertrag.atomic import atomic_open
from expertrag.errors import KnowledgeBaseError
from expertrag.retrievers.vector_index import VectorIndex


def clustered_unit_vectors(n: int, dimension: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around random centres, shaped like sentence embeddings of a topical corpus."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension))
    vectors = centres[rng.integers(0, clusters, size=n)] + 0.6 * rng.normal(size=(n, dimension))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def test_exact_index_returns_true_neighbours() -> None:
    vectors = clustered_unit_vectors(2_000, 32, 20, seed=1)
    index = VectorIndex.build(vectors, [f"c{i}" for i in range(2_000)])
    assert index.kind == "flat"
    scores, ids = index.search(vectors[:5], 3)
    assert [row[0] for row in ids] == ["c0", "c1", "c2", "c3", "c4"]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_hnsw_recall_at_10_against_exact() -> None:
    vectors = clustered_unit_vectors(30_000, 64, 200, seed=2)
    queries = clustered_unit_vectors(300, 64, 200, seed=3)
    ids = [str(i) for i in range(len(vectors))]
    exact = VectorIndex.build(vectors, ids)
    approximate = VectorIndex.build(vectors, ids, exact_max=10_000)
    assert approximate.kind == "hnsw"

    _, exact_ids = exact.search(queries, 10)
    _, approximate_ids = approximate.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate_ids, exact_ids)])
    print(f"HNSW recall@10 against exact search: {recall:.4f}")
    assert recall >= 0.98


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    vectors = clustered_unit_vectors(500, 16, 5, seed=4)
    index = VectorIndex.build(vectors, [f"c{i}" for i in range(500)])
    index.save(tmp_path / "i.faiss", fingerprint="gen-7")
    loaded, fingerprint = VectorIndex.load(tmp_path / "i.faiss")
    assert fingerprint == "gen-7"
    assert loaded.chunk_ids == index.chunk_ids
    assert loaded.search(vectors[:3], 2)[1] == index.search(vectors[:3], 2)[1]


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "i.faiss"
    VectorIndex.build(clustered_unit_vectors(10, 8, 2, seed=5), [str(i) for i in range(10)]).save(target, "old")
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_open(target) as out:
            out.write(b"partial")
            raise RuntimeError("crash in the middle of a write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["i.faiss"]


def test_corrupt_index_file_is_reported(tmp_path: Path) -> None:
    target = tmp_path / "i.faiss"
    target.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(KnowledgeBaseError, match="Cannot read the vector index"):
        VectorIndex.load(target)


def test_mismatched_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="chunk ids"):
        VectorIndex.build(clustered_unit_vectors(4, 8, 2, seed=6), ["a", "b"])
