"""Pilot embeddings: where in query space each expert (or the base encoder) serves queries best.

Building follows RouterRetriever (Lee et al., 2024, arXiv 2409.02685). Every candidate
(the base encoder and each domain expert) ranks the stored queries of every domain
expert, and each query joins the group of the candidate whose ranking gives it the
highest nDCG@10. A (candidate, domain) group with at least ``min_group_size`` queries and
``min_group_fraction`` of the domain's queries keeps the centroid of its queries' routing
representations as one pilot. Smaller groups are dropped as noise. A query is then routed to
the candidate whose pilots are most similar: ``mean`` averages the similarity over a
candidate's pilots as the paper does, ``weighted`` weights each pilot by its number of
queries, and ``max`` takes the nearest pilot.

``weighted`` is the default because an unweighted mean lets a pilot of 3 queries count as
much as one of 100.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.adapter import BASE_EXPERT, ExpertEncoders, transformer_of
from expertrag.retrievers.experts.data import TrainingData

logger = logging.getLogger(__name__)

Representation = Literal["static", "base"]
Aggregate = Literal["weighted", "mean", "max"]
REPRESENTATIONS: tuple[str, ...] = ("static", "base")
AGGREGATES: tuple[str, ...] = ("weighted", "mean", "max")


class StaticEmbedder:
    """Mean of the base model's input word-piece embeddings of a text.

    It costs one tokenizer call and a table lookup, far less than an encoder pass, so routing
    adds little latency. It separates domains by vocabulary, not by meaning.
    """

    def __init__(self, encoder: Encoder) -> None:
        table = transformer_of(encoder.model).get_input_embeddings().weight
        self.table = table.detach().float().cpu().numpy()
        self.tokenizer = encoder.tokenizer
        self.max_length = encoder.max_seq_length

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an (n, dimension) float32 matrix of mean word-piece embeddings (not normalized)."""
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length)
        for row, ids in enumerate(encoded["input_ids"]):
            if ids:
                out[row] = self.table[ids].mean(axis=0)
        return out


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Scale each row to unit length; zero rows stay zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


@dataclass
class PilotLibrary:
    """Pilot embeddings and per-domain centroids in one routing representation.

    A raw representation ``r`` is compared as ``normalize(r - center)``: subtracting the mean
    of all pilot queries removes the direction every text shares, which otherwise makes
    all cosines close to 1 for the static representation.
    """

    representation: str
    aggregate: str
    fingerprint: str
    center: np.ndarray
    pilots: np.ndarray
    pilot_experts: list[str]
    pilot_domains: list[str]
    pilot_sizes: list[int]
    centroids: np.ndarray
    centroid_experts: list[str]
    assignments: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def candidates(self) -> list[str]:
        """Experts that own at least one pilot, in a fixed order."""
        return sorted(set(self.pilot_experts))

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Center and normalize raw routing representations."""
        return normalize_rows(raw - self.center)

    def pilot_scores(self, vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Return (candidate names, (n, candidates) similarities) aggregated over each candidate's pilots."""
        names = self.candidates
        similarities = vectors @ self.pilots.T
        scores = np.zeros((len(vectors), len(names)), dtype=np.float32)
        for column, name in enumerate(names):
            own = [i for i, expert in enumerate(self.pilot_experts) if expert == name]
            block = similarities[:, own]
            if self.aggregate == "max":
                scores[:, column] = block.max(axis=1)
            elif self.aggregate == "mean":
                scores[:, column] = block.mean(axis=1)
            else:
                sizes = np.array([self.pilot_sizes[i] for i in own], dtype=np.float32)
                scores[:, column] = block @ (sizes / sizes.sum())
        return names, scores

    def centroid_scores(self, vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Return (expert names, similarities to each domain expert's centroid of all its queries)."""
        return list(self.centroid_experts), vectors @ self.centroids.T

    def save(self, folder: Path) -> None:
        """Write ``pilots.npz`` and ``pilots.json`` into ``folder``, each replaced atomically."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, center=self.center, pilots=self.pilots, centroids=self.centroids)
        atomic_write_bytes(folder / "pilots.npz", buffer.getvalue())
        meta = {"representation": self.representation, "aggregate": self.aggregate, "fingerprint": self.fingerprint,
                "pilot_experts": self.pilot_experts, "pilot_domains": self.pilot_domains,
                "pilot_sizes": self.pilot_sizes, "centroid_experts": self.centroid_experts,
                "assignments": self.assignments}
        atomic_write_bytes(folder / "pilots.json", json.dumps(meta, indent=2).encode("utf-8"))

    @classmethod
    def load(cls, folder: Path) -> "PilotLibrary | None":
        """Read a library written by :meth:`save`; return None when it is missing or unreadable."""
        try:
            meta = json.loads((folder / "pilots.json").read_text(encoding="utf-8"))
            with np.load(folder / "pilots.npz") as arrays:
                center, pilots, centroids = arrays["center"], arrays["pilots"], arrays["centroids"]
            return cls(meta["representation"], meta["aggregate"], meta["fingerprint"], center, pilots,
                       meta["pilot_experts"], meta["pilot_domains"], meta["pilot_sizes"], centroids,
                       meta["centroid_experts"], meta.get("assignments", {}))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as error:
            logger.warning("Ignoring unreadable pilot embeddings in %s: %s", folder, error)
            return None


def library_fingerprint(experts: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """Return a sha256 of the domain experts (name, adapter and data hashes) and the routing settings."""
    payload = json.dumps({"experts": sorted(experts, key=lambda e: e["name"]), "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def score_candidates(
    domain: TrainingData, query_ids: list[str], encoders: ExpertEncoders, candidates: list[str],
    cache: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Return {candidate: {query id: nDCG@10}} of every candidate on a domain's queries.

    ``cache`` maps a candidate to earlier scores of the same queries; cached candidates are
    not encoded again.
    """
    texts = [domain.queries[q] for q in query_ids]
    scores: dict[str, dict[str, float]] = {}
    for candidate in candidates:
        cached = (cache or {}).get(candidate)
        if cached is not None and all(q in cached for q in query_ids):
            scores[candidate] = {q: cached[q] for q in query_ids}
            continue
        scores[candidate] = domain.ndcg_per_query(encoders.encode(texts, candidate), query_ids)
    return scores


def best_candidate(query_scores: dict[str, float], own_expert: str) -> str | None:
    """Return the candidate with the highest nDCG@10, or None when every candidate scores 0.

    Ties go to the domain's own expert, then to the base encoder, then to the first name.
    """
    top = max(query_scores.values())
    if top <= 0:
        return None
    tied = [name for name, value in query_scores.items() if value == top]
    for preferred in (own_expert, BASE_EXPERT):
        if preferred in tied:
            return preferred
    return sorted(tied)[0]


def build_library(
    domains: dict[str, list[TrainingData]],
    encoders: ExpertEncoders,
    represent: Callable[[list[str]], np.ndarray],
    representation: str,
    aggregate: str,
    fingerprint: str,
    max_queries_per_domain: int = 300,
    min_group_size: int = 3,
    min_group_fraction: float = 0.05,
    seed: int = 0,
    score_cache: dict[str, dict[str, dict[str, float]]] | None = None,
) -> PilotLibrary:
    """Score, group and average the stored queries of every domain expert into a pilot library.

    Args:
        domains: {domain expert name: its domains' queries and unit vectors}.
        encoders: the base encoder and every domain expert, merged.
        represent: raw routing representation of a list of texts.
        score_cache: {"<expert>/<domain>": {candidate: {query id: nDCG@10}}}, read and updated in place.
    """
    candidates = [BASE_EXPERT, *sorted(domains)]
    raw_rows: list[np.ndarray] = []
    labels: list[tuple[str, str, str]] = []
    assignments: dict[str, dict[str, int]] = {}
    score_cache = score_cache if score_cache is not None else {}

    for expert_name in sorted(domains):
        for domain in domains[expert_name]:
            query_ids = sorted(domain.qrels)
            if len(query_ids) > max_queries_per_domain:
                order = np.random.default_rng(seed).permutation(len(query_ids))[:max_queries_per_domain]
                query_ids = sorted(query_ids[i] for i in order)
            key = f"{expert_name}/{domain.name}"
            scores = score_candidates(domain, query_ids, encoders, candidates, score_cache.get(key))
            score_cache[key] = scores
            raw = represent([domain.queries[q] for q in query_ids])
            counts: dict[str, int] = {}
            for row, query_id in enumerate(query_ids):
                winner = best_candidate({c: scores[c][query_id] for c in candidates}, expert_name)
                counts[winner or "none"] = counts.get(winner or "none", 0) + 1
                raw_rows.append(raw[row])
                labels.append((expert_name, domain.name, winner or ""))
            assignments[key] = counts
            logger.info("Pilot queries of %s: best candidate counts %s", key, counts)

    if not raw_rows:
        dimension = represent(["query"]).shape[1]
        empty = np.zeros((0, dimension), dtype=np.float32)
        return PilotLibrary(representation, aggregate, fingerprint, np.zeros(dimension, dtype=np.float32), empty,
                            [], [], [], empty, [], assignments)
    matrix = np.stack(raw_rows).astype(np.float32)
    center = matrix.mean(axis=0)
    vectors = normalize_rows(matrix - center)

    pilots, pilot_experts, pilot_domains, pilot_sizes = [], [], [], []
    groups: dict[tuple[str, str], list[int]] = {}
    domain_sizes: dict[str, int] = {}
    for row, (expert_name, domain_name, winner) in enumerate(labels):
        domain_key = f"{expert_name}/{domain_name}"
        domain_sizes[domain_key] = domain_sizes.get(domain_key, 0) + 1
        if winner:
            groups.setdefault((winner, domain_key), []).append(row)
    for (winner, domain_key), rows in sorted(groups.items()):
        if len(rows) < max(min_group_size, min_group_fraction * domain_sizes[domain_key]):
            continue
        pilots.append(vectors[rows].mean(axis=0))
        pilot_experts.append(winner)
        pilot_domains.append(domain_key)
        pilot_sizes.append(len(rows))

    centroids, centroid_experts = [], []
    for expert_name in sorted(domains):
        rows = [row for row, label in enumerate(labels) if label[0] == expert_name]
        centroids.append(vectors[rows].mean(axis=0))
        centroid_experts.append(expert_name)

    pilot_matrix = normalize_rows(np.stack(pilots)) if pilots else np.zeros((0, matrix.shape[1]), dtype=np.float32)
    return PilotLibrary(representation, aggregate, fingerprint, center.astype(np.float32), pilot_matrix,
                        pilot_experts, pilot_domains, pilot_sizes, normalize_rows(np.stack(centroids)),
                        centroid_experts, assignments)
