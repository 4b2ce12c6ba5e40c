"""Personalized PageRank by power iteration on a sparse matrix.

The walk restarts at the personalization distribution with probability ``1 - damping``
at every step. Dangling nodes (no out-edges) send their mass back to the
personalization distribution, the convention python-igraph and networkx also use, so
scores always sum to one. Several personalization vectors run as one sparse
matrix-by-dense-matrix product per iteration.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from expertrag.errors import InputError

logger = logging.getLogger(__name__)


def transition_matrix(adjacency: sp.spmatrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Return (column-stochastic transition matrix, dangling-node mask) for a weighted adjacency.

    ``adjacency[i, j]`` is the weight of the edge i → j; an undirected graph passes a
    symmetric matrix. Negative weights raise InputError because no walk can follow them.
    """
    matrix = sp.csr_matrix(adjacency, dtype=np.float64)
    if matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"The adjacency matrix must be square, got shape {matrix.shape}")
    if matrix.nnz and matrix.data.min() < 0:
        raise InputError("The adjacency matrix has negative edge weights; personalized PageRank needs weights >= 0")
    out_weight = np.asarray(matrix.sum(axis=1)).ravel()
    dangling = out_weight == 0
    inverse = np.divide(1.0, out_weight, out=np.zeros_like(out_weight), where=~dangling)
    # Row-normalize, then transpose so that a column contains the probabilities of leaving a node.
    stochastic = sp.diags(inverse) @ matrix
    return sp.csr_matrix(stochastic.T), dangling


def personalized_pagerank(
    transition: sp.csr_matrix,
    dangling: np.ndarray,
    personalization: np.ndarray,
    damping: float = 0.5,
    tolerance: float = 1e-8,
    max_iterations: int = 100,
) -> np.ndarray:
    """Return PageRank scores for one personalization vector (shape n) or several (shape n × b).

    Each personalization column is normalized to sum to one; a column of zeros raises
    InputError because the walk would have nowhere to restart. Iteration stops when the
    L1 change of every column falls below ``tolerance``.
    """
    if not 0.0 <= damping < 1.0:
        raise InputError(f"damping must be in [0, 1), got {damping}")
    vectors = np.asarray(personalization, dtype=np.float64)
    single = vectors.ndim == 1
    if single:
        vectors = vectors[:, None]
    if vectors.shape[0] != transition.shape[0]:
        raise InputError(f"The personalization has {vectors.shape[0]} entries for a graph of {transition.shape[0]} nodes")
    if (vectors < 0).any():
        raise InputError("The personalization has negative entries")
    totals = vectors.sum(axis=0)
    if (totals == 0).any():
        raise InputError("A personalization vector is all zeros: seed at least one node")
    restart = vectors / totals

    scores = restart.copy()
    dangling_rows = np.flatnonzero(dangling)
    for _ in range(max_iterations):
        dangling_mass = scores[dangling_rows].sum(axis=0) if dangling_rows.size else 0.0
        updated = damping * (transition @ scores + restart * dangling_mass) + (1.0 - damping) * restart
        change = np.abs(updated - scores).sum(axis=0).max()
        scores = updated
        if change < tolerance:
            break
    else:
        logger.warning("Personalized PageRank stopped after %d iterations with change %.2e", max_iterations, change)
    return scores[:, 0] if single else scores
