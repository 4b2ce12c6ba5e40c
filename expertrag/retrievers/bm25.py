"""BM25 over a collection's chunks with bm25s (sparse matrices, Snowball stemming)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class BM25Index:
    """A bm25s index and the chunk id of each of its rows."""

    model: Any
    chunk_ids: list[str]

    @classmethod
    def build(cls, texts: list[str], chunk_ids: list[str], language: str = "english") -> "BM25Index":
        """Tokenize with English stop words and the Snowball stemmer, then index."""
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer(language)
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
        model = bm25s.BM25()
        model.index(tokens, show_progress=False)
        model._expertrag_stemmer = stemmer
        return cls(model=model, chunk_ids=list(chunk_ids))

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Return (scores, chunk ids) of the top ``k`` chunks of each query; zero-score hits are dropped."""
        import bm25s

        k = min(k, len(self.chunk_ids))
        if k == 0 or not queries:
            return np.zeros((len(queries), 0), dtype=np.float32), [[] for _ in queries]
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=self.model._expertrag_stemmer, show_progress=False)
        rows, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        ids = [[self.chunk_ids[r] for r, s in zip(row, row_scores) if s > 0] for row, row_scores in zip(rows, scores)]
        return scores, ids

    def score_matrix(self, queries: list[str], depth: int) -> np.ndarray:
        """Return a (queries, chunks) float32 matrix of BM25 scores.

        Scores are exact for each query's best ``depth`` chunks. Every other chunk gets the
        query's ``depth``-th score, a floor that keeps z-normalization over all chunks cheap.
        """
        import bm25s

        depth = min(depth, len(self.chunk_ids))
        if depth == 0 or not queries:
            return np.zeros((len(queries), len(self.chunk_ids)), dtype=np.float32)
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=self.model._expertrag_stemmer, show_progress=False)
        rows, scores = self.model.retrieve(tokens, k=depth, show_progress=False, n_threads=0)
        matrix = np.repeat(scores.min(axis=1, keepdims=True), len(self.chunk_ids), axis=1).astype(np.float32)
        np.put_along_axis(matrix, rows.astype(np.int64), scores.astype(np.float32), axis=1)
        return matrix
