"""A hybrid teacher that labels training queries for distillation into query-side experts.

The teacher ranks a collection by a weighted sum of z-normalized BM25 and base-encoder
scores. On the test queries of the 15 shared BEIR sets this hybrid beats the base encoder by
5.8 nDCG@10 points on average and on every set (benchmarks/results/teacher_hybrid.md). An expert only changes how queries are
encoded, so it cannot add term matching to the index. What it can learn is to move a
domain's queries toward the documents that the hybrid prefers, and that transfers to
queries it has never seen. The student is trained to match the teacher's softmax over a
fixed candidate list for each query (a listwise KL loss).

Teacher scores are kept in the base encoder's cosine units: ``cosine + w / (1 - w) * s *
z(BM25)``, where ``s`` is the standard deviation of the query's cosines over the collection.
Per query this ranks exactly as ``w * z(BM25) + (1 - w) * z(cosine)`` does, and with the
student's own temperature the teacher's softmax equals the base encoder's when BM25 adds
nothing. Z-scores under a temperature of 1 were far flatter than the student's softmax,
and fitting them made the student disagree with the teacher more than the base encoder did.

Candidates are the teacher's best ``candidates // 2`` units, then the base encoder's best
units not already chosen, so the loss covers the documents that the student ranks high as
well as those that it should rank high.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from expertrag.retrievers.encoder import Encoder

logger = logging.getLogger(__name__)

BM25_WEIGHT = 0.1
"""Weight of z-normalized BM25 in the teacher; the base encoder gets the rest. Chosen as the
best mean nDCG@10 on the training queries of SciFact, NFCorpus, HotpotQA and MuSiQue among
0.1-0.7 (benchmarks/results/teacher_hybrid.md); the same weight serves every collection."""
CANDIDATES = 64
BM25_DEPTH = 200
"""BM25 scores are exact for each query's best 200 units; the rest get the 200th score."""
TEACHER_LABEL_DEPTH = 1
"""A pseudo-query's relevant document is the teacher's best one. On CACM pseudo-queries, a
distilled expert ranked that document higher than the base encoder did (validation nDCG@10
0.757 against 0.788). Its top 10 shared fewer documents with the teacher's top 10 (0.786
against 0.832), yet the same expert gained 5.9 points on CACM's real test queries. So the
best document is the label that tracks what distillation improves."""


@dataclass
class TeacherTargets:
    """Teacher scores over a candidate list of unit rows for each query.

    ``rows[i]`` and ``scores[i]`` belong to ``query_ids[i]``. Scores are in cosine units
    (see the module docstring) and comparable within a row only.
    """

    query_ids: list[str]
    rows: np.ndarray
    scores: np.ndarray
    bm25_weight: float = BM25_WEIGHT

    def __post_init__(self) -> None:
        if self.rows.shape != self.scores.shape or len(self.query_ids) != len(self.rows):
            raise ValueError(f"{len(self.query_ids)} query ids, rows {self.rows.shape} and scores "
                             f"{self.scores.shape} must match")
        self._position = {query_id: i for i, query_id in enumerate(self.query_ids)}

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._position

    def subset(self, query_ids: Sequence[str]) -> "TeacherTargets":
        """Return the targets of ``query_ids`` (those the teacher labeled), in that order."""
        labeled = [q for q in query_ids if q in self._position]
        index = np.array([self._position[q] for q in labeled], dtype=np.int64)
        return TeacherTargets(labeled, self.rows[index], self.scores[index], self.bm25_weight)

    def concat(self, other: "TeacherTargets") -> "TeacherTargets":
        """Return the targets of both, ``self`` first; a query in both keeps ``self``'s row."""
        extra = [q for q in other.query_ids if q not in self._position]
        tail = other.subset(extra)
        return TeacherTargets(self.query_ids + tail.query_ids, np.concatenate([self.rows, tail.rows]),
                              np.concatenate([self.scores, tail.scores]), self.bm25_weight)

    def qrels(self, unit_documents: Sequence[str], depth: int = TEACHER_LABEL_DEPTH) -> dict[str, dict[str, int]]:
        """Return pseudo-qrels: the teacher's ``depth`` best documents, each relevant with grade 1.

        A document counts once, at its best unit. These labels replace the source document of
        a pseudo-query when validating and when building pilot embeddings, so both measure
        agreement with the teacher rather than finding the sentence's own document.
        """
        labels: dict[str, dict[str, int]] = {}
        order = np.argsort(-self.scores, axis=1, kind="stable")
        for i, query_id in enumerate(self.query_ids):
            graded: dict[str, int] = {}
            for column in order[i]:
                document = unit_documents[int(self.rows[i, column])]
                if document not in graded:
                    graded[document] = 1
                    if len(graded) == depth:
                        break
            labels[query_id] = graded
        return labels


def z_normalize(matrix: np.ndarray) -> np.ndarray:
    """Return each row shifted to mean 0 and scaled to standard deviation 1 (constant rows become 0)."""
    mean = matrix.mean(axis=1, keepdims=True)
    std = matrix.std(axis=1, keepdims=True)
    return (matrix - mean) / np.where(std > 0, std, 1.0)


def top_columns(matrix: np.ndarray, count: int) -> np.ndarray:
    """Return the columns of each row's ``count`` largest values, best first."""
    if count < matrix.shape[1]:
        columns = np.argpartition(-matrix, count - 1, axis=1)[:, :count]
    else:
        columns = np.tile(np.arange(matrix.shape[1]), (len(matrix), 1))
    order = np.argsort(-np.take_along_axis(matrix, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


def hybrid_teacher(
    queries: dict[str, str],
    unit_texts: Sequence[str],
    unit_vectors: np.ndarray,
    encoder: Encoder,
    bm25_weight: float = BM25_WEIGHT,
    candidates: int = CANDIDATES,
    batch_size: int = 256,
) -> TeacherTargets:
    """Score every query against every unit with the hybrid and keep each query's candidate list.

    Args:
        queries: query id to text.
        unit_texts: the text of each unit, in ``unit_vectors`` order (BM25 indexes these).
        unit_vectors: the base encoder's unit vectors.
        encoder: the base encoder, which encodes the queries.
        bm25_weight: weight of z-normalized BM25 against ``1 - bm25_weight`` for the base
            encoder's z-normalized cosine, in [0, 1).
        candidates: units kept per query (all units when the collection is smaller).
        batch_size: queries scored at once; memory is ``batch_size`` × units floats.
    """
    from expertrag.retrievers.bm25 import BM25Index

    if len(unit_texts) != len(unit_vectors):
        raise ValueError(f"{len(unit_texts)} unit texts and {len(unit_vectors)} unit vectors must match")
    if not 0.0 <= bm25_weight < 1.0:
        raise ValueError(f"Invalid bm25_weight {bm25_weight}: use a value in [0, 1)")
    query_ids = sorted(queries)
    units = len(unit_texts)
    width = min(candidates, units)
    rows = np.zeros((len(query_ids), width), dtype=np.int64)
    scores = np.zeros((len(query_ids), width), dtype=np.float32)
    if not query_ids:
        return TeacherTargets([], rows, scores, bm25_weight)
    index = BM25Index.build(list(unit_texts), [str(i) for i in range(units)])
    for first in range(0, len(query_ids), batch_size):
        texts = [queries[q] for q in query_ids[first : first + batch_size]]
        dense = encoder.encode(texts) @ unit_vectors.T
        lexical = index.score_matrix(texts, BM25_DEPTH)
        spread = dense.std(axis=1, keepdims=True)
        hybrid = dense + bm25_weight / (1.0 - bm25_weight) * spread * z_normalize(lexical)
        by_teacher = top_columns(hybrid, width)
        by_dense = top_columns(dense, width)
        for offset in range(len(texts)):
            chosen = list(dict.fromkeys([*by_teacher[offset, : max(1, width // 2)].tolist(),
                                         *by_dense[offset].tolist(), *by_teacher[offset].tolist()]))[:width]
            rows[first + offset] = chosen
            scores[first + offset] = hybrid[offset, chosen]
    logger.info("Hybrid teacher labeled %d queries over %d units (BM25 weight %.2f, %d candidates each)",
                len(query_ids), units, bm25_weight, width)
    return TeacherTargets(query_ids, rows, scores, bm25_weight)
