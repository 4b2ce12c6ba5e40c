"""RouterRetriever: pick a query-side expert for each query, encode with it, search one shared index.

Strategies:

- ``pilot`` (default): the candidate (base encoder or domain expert) whose pilot
  embeddings are most similar to the query's routing representation.
- ``centroid``: the domain expert whose domain centroid is nearest.
- ``fixed:NAME``: always one expert (``fixed:base`` is the plain base encoder).
- ``multitask``: the expert of kind ``multitask`` (one adapter trained on all domains).
- ``fusion``: every candidate encodes and searches, and reciprocal-rank fusion merges the lists.
- ``oracle`` exists only in evaluation, because it needs relevance judgements.

The routing representation is ``static`` by default (mean word-piece embeddings, nearly
free) or ``base``, the base encoder's embedding that RouterRetriever (Lee et al., 2024)
routes by. ``base`` costs one more encoder pass unless the base encoder is picked. Experts are merged copies of the base
model, so a routed query costs one encoder pass, and a batch is encoded one expert at a time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.errors import InputError
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.adapter import BASE_EXPERT, ExpertEncoders
from expertrag.retrievers.experts.errors import ExpertError
from expertrag.retrievers.experts.pilots import (
    AGGREGATES,
    REPRESENTATIONS,
    PilotLibrary,
    StaticEmbedder,
    build_library,
    library_fingerprint,
)
from expertrag.retrievers.experts.registry import ExpertInfo, ExpertRegistry
from expertrag.retrievers.fusion import reciprocal_rank_fusion

logger = logging.getLogger(__name__)

SearchFunction = Callable[[np.ndarray, int], list[list[tuple[str, float]]]]
"""Takes (query vectors, k) and returns each query's (id, score) list, best first."""
STRATEGIES = ("pilot", "centroid", "fusion", "multitask", "oracle", "fixed:NAME")
ROUTER_FOLDER = "_router"
FUSION_DEPTH = 100


@dataclass
class RoutingDecision:
    """The expert that served a query, the strategy, and the similarity of each candidate."""

    expert: str
    strategy: str
    similarities: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-ready dict."""
        return asdict(self)


@dataclass
class RoutedResult:
    """The ranked (id, score) list of one query with its routing decision."""

    query: str
    decision: RoutingDecision
    hits: list[tuple[str, float]]


def parse_strategy(strategy: str) -> tuple[str, str | None]:
    """Split ``fixed:NAME`` into ("fixed", NAME); other strategies come back as (strategy, None)."""
    if strategy.startswith("fixed:") and len(strategy) > len("fixed:"):
        return "fixed", strategy[len("fixed:"):]
    if strategy in ("pilot", "centroid", "fusion", "multitask", "oracle"):
        return strategy, None
    usable = [name for name in STRATEGIES if name != "oracle"]
    raise InputError(f"Unknown routing strategy {strategy!r}: use one of {', '.join(usable)}")


class RouterRetriever:
    """Experts of one registry over one base encoder, with pilot routing.

    Experts whose folders are missing or corrupt are skipped with a logged warning. Pilot
    embeddings are built on first use and cached under ``<registry root>/_router``; they
    are rebuilt when the set of experts or a routing setting changes.

    Example::

        router = RouterRetriever(ExpertRegistry(kb_path / "experts"), Encoder.shared())
        vectors, decisions = router.encode(["Does vitamin D prevent fractures?"])
        decisions[0].expert, decisions[0].similarities
    """

    def __init__(
        self,
        registry: ExpertRegistry,
        encoder: Encoder,
        strategy: str = "pilot",
        representation: str = "static",
        aggregate: str = "weighted",
        max_pilot_queries: int = 300,
        min_group_size: int = 3,
        min_group_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        parse_strategy(strategy)
        if representation not in REPRESENTATIONS:
            raise InputError(f"Unknown routing representation {representation!r}: use {' or '.join(REPRESENTATIONS)}")
        if aggregate not in AGGREGATES:
            raise InputError(f"Unknown pilot aggregate {aggregate!r}: use {', '.join(AGGREGATES)}")
        self.registry = registry
        self.encoder = encoder
        self.strategy = strategy
        self.representation = representation
        self.aggregate = aggregate
        self.max_pilot_queries = max_pilot_queries
        self.min_group_size = min_group_size
        self.min_group_fraction = min_group_fraction
        self.seed = seed
        self.encoders = ExpertEncoders(encoder)
        self.experts: dict[str, ExpertInfo] = {}
        self._static: StaticEmbedder | None = None
        self._library: PilotLibrary | None = None
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._load_experts()

    def reload(self) -> None:
        """Read the registry again, so experts added or removed since construction take effect."""
        with self._lock:
            self.encoders = ExpertEncoders(self.encoder)
            self.experts = {}
            self._library = None
            self._warned = set()
            self._load_experts()

    def _warn_once(self, message: str) -> None:
        """Log ``message`` as a warning the first time, then at debug level, so a server's log is not flooded."""
        if message in self._warned:
            logger.debug("%s", message)
            return
        self._warned.add(message)
        logger.warning("%s", message)

    def _load_experts(self) -> None:
        for info in self.registry.list():
            try:
                weights = self.registry.load_weights(info.name)
                self.encoders.add(info.name, weights)
            except ExpertError as error:
                logger.warning("Routing skips expert %r: %s", info.name, error)
                continue
            self.experts[info.name] = info
        logger.info("Router loaded %d experts from %s: %s", len(self.experts), self.registry.root,
                    ", ".join(sorted(self.experts)) or "none")

    @property
    def domain_experts(self) -> list[str]:
        """Loaded experts of kind ``domain``: the routing candidates besides the base encoder."""
        return sorted(name for name, info in self.experts.items() if info.kind == "domain")

    @property
    def multitask_expert(self) -> str | None:
        """The loaded multitask expert (the one named ``multitask`` when there are several), or None."""
        names = sorted(name for name, info in self.experts.items() if info.kind == "multitask")
        if "multitask" in names:
            return "multitask"
        return names[0] if names else None

    # Routing representation and pilots

    def _raw_representation(self, texts: list[str]) -> np.ndarray:
        if self.representation == "base":
            return self.encoder.encode(texts)
        if self._static is None:
            self._static = StaticEmbedder(self.encoder)
        return self._static.embed(texts)

    def library(self) -> PilotLibrary:
        """Return the pilot library, loading or building it on first use."""
        with self._lock:
            if self._library is None:
                self._library = self._load_or_build_library()
            return self._library

    def _library_fingerprint(self) -> str:
        experts = [{"name": name, "adapter": self.experts[name].metadata.get("adapter_sha256"),
                    "data": self.experts[name].metadata.get("data_sha256")} for name in self.domain_experts]
        settings = {"representation": self.representation, "aggregate": self.aggregate, "encoder": self.encoder.name,
                    "max_pilot_queries": self.max_pilot_queries, "min_group_size": self.min_group_size,
                    "min_group_fraction": self.min_group_fraction, "seed": self.seed}
        return library_fingerprint(experts, settings)

    def _load_or_build_library(self) -> PilotLibrary:
        folder = self.registry.root / ROUTER_FOLDER
        fingerprint = self._library_fingerprint()
        cached = PilotLibrary.load(folder)
        if cached is not None and cached.fingerprint == fingerprint:
            return cached

        domains = {}
        for name in self.domain_experts:
            try:
                domains[name] = self.registry.load_domains(name)
            except ExpertError as error:
                logger.warning("Pilot embeddings leave out the queries of expert %r: %s", name, error)
        score_cache = self._read_score_cache(folder)
        library = build_library(domains, self.encoders, self._raw_representation, self.representation, self.aggregate,
                                fingerprint, self.max_pilot_queries, self.min_group_size, self.min_group_fraction,
                                self.seed, score_cache)
        try:
            library.save(folder)
            self._write_score_cache(folder, score_cache)
        except OSError as error:
            logger.warning("Could not save pilot embeddings in %s: %s; they stay in memory only", folder, error)
        logger.info("Built %d pilot embeddings for %d domain experts", len(library.pilots), len(domains))
        return library

    def _candidate_fingerprints(self) -> dict[str, str]:
        prints = {name: str(self.experts[name].metadata.get("adapter_sha256")) for name in self.domain_experts}
        prints[BASE_EXPERT] = self.encoder.name
        return prints

    def _read_score_cache(self, folder: Any) -> dict[str, dict[str, dict[str, float]]]:
        """Read cached per-query scores, keeping only candidates and domains whose hashes still match."""
        try:
            stored = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        prints = self._candidate_fingerprints()
        data_prints = {name: self.experts[name].metadata.get("data_sha256") for name in self.domain_experts}
        cache: dict[str, dict[str, dict[str, float]]] = {}
        for key, by_candidate in stored.get("scores", {}).items():
            owner = key.split("/", 1)[0]
            if stored.get("data", {}).get(owner) != data_prints.get(owner):
                continue
            cache[key] = {c: s for c, s in by_candidate.items() if stored.get("candidates", {}).get(c) == prints.get(c)}
        return cache

    def _write_score_cache(self, folder: Any, cache: dict[str, dict[str, dict[str, float]]]) -> None:
        payload = {"candidates": self._candidate_fingerprints(),
                   "data": {name: self.experts[name].metadata.get("data_sha256") for name in self.domain_experts},
                   "scores": cache}
        atomic_write_bytes(folder / "scores.json", json.dumps(payload).encode("utf-8"))

    # Routing

    def route(self, texts: Sequence[str], strategy: str | None = None) -> list[RoutingDecision]:
        """Return one routing decision per text; ``fusion`` decisions name no single expert."""
        decisions, _ = self._route(list(texts), strategy or self.strategy)
        return decisions

    def _route(self, texts: list[str], strategy: str) -> tuple[list[RoutingDecision], np.ndarray | None]:
        """Route texts; also return their base vectors when the routing computed them anyway."""
        kind, name = parse_strategy(strategy)
        if kind == "oracle":
            raise InputError("Oracle routing needs relevance judgements, so it exists only in evaluation "
                             "(expertrag.eval.router_table); use pilot, centroid, fusion, multitask or fixed:NAME")
        if kind == "fusion":
            members = [BASE_EXPERT, *self.domain_experts]
            return [RoutingDecision("fusion", strategy, {}, f"reciprocal-rank fusion of {', '.join(members)}")
                    for _ in texts], None
        if kind in ("fixed", "multitask"):
            target = name if kind == "fixed" else self.multitask_expert
            if target is not None and self.encoders.has(target):
                return [RoutingDecision(target, strategy, {}, f"{strategy} strategy") for _ in texts], None
            reason = f"expert {target!r} is not available" if target else "no multitask expert is registered"
            self._warn_once(f"Routing strategy {strategy} falls back to the base encoder: {reason}")
            return [RoutingDecision(BASE_EXPERT, strategy, {}, f"{reason}; used the base encoder") for _ in texts], None

        library = self.library()
        raw = self._raw_representation(texts)
        base_vectors = raw if self.representation == "base" else None
        vectors = library.transform(raw)
        names, scores = library.pilot_scores(vectors) if kind == "pilot" else library.centroid_scores(vectors)
        if not names:
            reason = "no pilot embeddings (no usable domain experts); used the base encoder"
            return [RoutingDecision(BASE_EXPERT, strategy, {}, reason) for _ in texts], base_vectors
        decisions = []
        for row in range(len(texts)):
            similarities = {n: round(float(s), 4) for n, s in zip(names, scores[row])}
            best = names[int(np.argmax(scores[row]))]
            basis = {"weighted": "size-weighted mean similarity to its pilot embeddings",
                    "mean": "mean similarity to its pilot embeddings",
                    "max": "similarity to its nearest pilot embedding"}[self.aggregate] if kind == "pilot" else (
                "similarity to its domain centroid")
            decisions.append(RoutingDecision(best, strategy, similarities, f"highest {basis} ({self.representation} representation)"))
        return decisions, base_vectors

    def encode(self, texts: Sequence[str], strategy: str | None = None) -> tuple[np.ndarray, list[RoutingDecision]]:
        """Route and encode texts, one batch per chosen expert; rows keep the input order.

        Raises:
            InputError: the strategy is ``fusion`` or ``oracle``, which yield no single query vector.
        """
        texts = list(texts)
        strategy = strategy or self.strategy
        if parse_strategy(strategy)[0] == "fusion":
            raise InputError("Fusion yields one ranking per expert, not one query vector: use search()")
        decisions, base_vectors = self._route(texts, strategy)
        vectors = np.zeros((len(texts), self.encoder.dimension), dtype=np.float32)
        rows_of: dict[str, list[int]] = {}
        for row, decision in enumerate(decisions):
            rows_of.setdefault(decision.expert, []).append(row)
        for expert, rows in rows_of.items():
            if expert == BASE_EXPERT and base_vectors is not None:
                vectors[rows] = base_vectors[rows]
            else:
                vectors[rows] = self.encoders.encode([texts[row] for row in rows], expert)
        return vectors, decisions

    def search(self, texts: Sequence[str], search: SearchFunction, k: int, strategy: str | None = None) -> list[RoutedResult]:
        """Route, encode and search; ``search`` runs the index (for example ``VectorIndex`` or a collection searcher)."""
        texts = list(texts)
        strategy = strategy or self.strategy
        if parse_strategy(strategy)[0] == "fusion":
            return self._fused_search(texts, search, k, strategy)
        vectors, decisions = self.encode(texts, strategy)
        hits = search(vectors, k)
        return [RoutedResult(text, decision, row) for text, decision, row in zip(texts, decisions, hits)]

    def _fused_search(self, texts: list[str], search: SearchFunction, k: int, strategy: str) -> list[RoutedResult]:
        members = [BASE_EXPERT, *self.domain_experts]
        rankings = {member: search(self.encoders.encode(texts, member), max(k, FUSION_DEPTH)) for member in members}
        decisions, _ = self._route(texts, strategy)
        results = []
        for row, text in enumerate(texts):
            fused = fuse_rankings([[doc for doc, _ in rankings[m][row]] for m in members])
            results.append(RoutedResult(text, decisions[row], fused[:k]))
        return results


def fuse_rankings(rankings: list[list[str]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion of several experts' id lists (constant ``k``, ranks from 1)."""
    return reciprocal_rank_fusion(rankings, k=k)


def vector_index_search(index: Any) -> SearchFunction:
    """Adapt a :class:`~expertrag.retrievers.vector_index.VectorIndex` to a :data:`SearchFunction`."""

    def run(vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        scores, ids = index.search(vectors, k)
        return [list(zip(row_ids, map(float, row_scores))) for row_ids, row_scores in zip(ids, scores)]

    return run
