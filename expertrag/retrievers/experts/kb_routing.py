"""Routed retrieval in a knowledge base: the experts in ``<kb>/experts`` serve every collection.

Every collection of a knowledge base is indexed with the same frozen base encoder, so any
expert of the knowledge base can encode a query for any collection, whichever collection
it was trained on. ``expertrag experts train --kb KB`` writes its experts into
``<kb>/experts``, where :class:`KnowledgeBaseRouter` finds them.

Routing changes only the query vector of dense retrieval. The collection searcher runs as
it does without routing (BM25, fusion and graph retrieval included), except that the
query's vector comes from the expert the router picked. ``fusion`` searches once per
candidate (the base encoder and each domain expert) and merges the result lists by
reciprocal-rank fusion.

NOTE: ``KnowledgeBase.answer`` still filters the routed hits by their base-encoder
similarity to the question (``evidence_for``), so a passage that only the expert ranks
high can be left out of the LLM's evidence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from expertrag.errors import InputError
from expertrag.rag.answerer import Answer
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.adapter import BASE_EXPERT
from expertrag.retrievers.experts.registry import EXPERTS_FOLDER, METADATA_FILE, ExpertRegistry
from expertrag.retrievers.experts.router import FUSION_DEPTH, RouterRetriever, RoutingDecision, fuse_rankings, parse_strategy
from expertrag.retrievers.hits import Hit

logger = logging.getLogger(__name__)


class RoutedHits(list[Hit]):
    """Hits, best first, with the routing decision of the query that found them.

    It is a list, so code written for :meth:`KnowledgeBase.retrieve` without a router keeps working.
    """

    def __init__(self, hits: Iterable[Hit], routing: RoutingDecision) -> None:
        super().__init__(hits)
        self.routing = routing

    def to_dict(self) -> dict[str, Any]:
        """Return the hits and the routing decision as a JSON-ready dict."""
        return {"hits": [hit.to_dict() for hit in self], "routing": self.routing.to_dict()}


@dataclass
class RoutedAnswer(Answer):
    """An answer whose dense retrieval went through the router, with the routing decision."""

    routing: RoutingDecision | None = field(default=None)

    @classmethod
    def from_answer(cls, answer: Answer, routing: RoutingDecision) -> "RoutedAnswer":
        """Copy every field of ``answer`` and add ``routing``."""
        return cls(**{f.name: getattr(answer, f.name) for f in fields(Answer)}, routing=routing)


@dataclass
class RoutedQuery:
    """One query with its routing decision and the query vector of each expert that searches for it."""

    text: str
    decision: RoutingDecision
    vectors: dict[str, np.ndarray]

    def search(self, searcher: Any, k: int, retriever: str) -> list[Hit]:
        """Search a :class:`CollectionSearcher` with the routed query vector; with several vectors fuse the result lists."""
        if len(self.vectors) == 1:
            (vector,) = self.vectors.values()
            return self._search_one(searcher, vector, k, retriever)

        lists = [self._search_one(searcher, vector, max(k, FUSION_DEPTH), retriever) for vector in self.vectors.values()]
        by_id: dict[str, Hit] = {}
        for hits in lists:
            for hit in hits:
                by_id.setdefault(hit.chunk_id, hit)
        fused = fuse_rankings([[hit.chunk_id for hit in hits] for hits in lists])
        return [replace(by_id[chunk_id], score=score) for chunk_id, score in fused[:k]]

    def answer(self, answer: Answer) -> "RoutedAnswer":
        """Return ``answer`` with this query's routing decision."""
        return RoutedAnswer.from_answer(answer, self.decision)

    def _search_one(self, searcher: Any, vector: np.ndarray, k: int, retriever: str) -> list[Hit]:
        query_vector = np.ascontiguousarray(vector, dtype=np.float32)
        return searcher.retrieve(self.text, k, retriever, query_vector=query_vector, with_paths=False).hits


class KnowledgeBaseRouter:
    """The :class:`RouterRetriever` over the experts in one folder, reloaded when that folder changes.

    A folder without experts is not an error: every query then goes to the base encoder, and
    the decision's reason states that. Experts whose files are missing or corrupt are skipped with a
    logged warning, as :class:`RouterRetriever` does.
    """

    def __init__(self, root: str | Path, encoder: Encoder) -> None:
        self.registry = ExpertRegistry(root)
        self.encoder = encoder
        self._lock = threading.Lock()
        self._router: RouterRetriever | None = None
        self._signature: tuple[Any, ...] | None = None

    @classmethod
    def for_knowledge_base(cls, kb_path: str | Path, encoder: Encoder) -> "KnowledgeBaseRouter":
        """Return the router over the experts in ``<kb_path>/experts``."""
        return cls(Path(kb_path) / EXPERTS_FOLDER, encoder)

    def _folder_signature(self) -> tuple[Any, ...]:
        """Names and modification times of each expert's metadata and adapter files."""
        signature = []
        for name in self.registry.names():
            folder = self.registry.root / name
            times = []
            for file_name in (METADATA_FILE, "adapter_config.json", "adapter_model.safetensors"):
                try:
                    times.append((folder / file_name).stat().st_mtime_ns)
                except OSError:
                    times.append(None)
            signature.append((name, *times))
        return tuple(signature)

    def router(self) -> RouterRetriever | None:
        """Return the router over the current experts, or None when the folder contains no experts."""
        signature = self._folder_signature()
        with self._lock:
            if not signature:
                self._router, self._signature = None, signature
                return None
            if self._router is None:
                self._router = RouterRetriever(self.registry, self.encoder)
            elif signature != self._signature:
                logger.info("Experts in %s changed; reloading the router", self.registry.root)
                self._router.reload()
            self._signature = signature
            return self._router

    def prepare(self, query: str, strategy: str) -> RoutedQuery:
        """Route ``query`` and encode it with the chosen expert (with every candidate for ``fusion``).

        Raises:
            InputError: the strategy is unknown, or ``oracle``, which needs relevance judgements.
        """
        if not query.strip():
            raise InputError("The query is empty")
        kind, _ = parse_strategy(strategy)
        if kind == "oracle":
            raise InputError("Oracle routing needs relevance judgements, so it exists only in evaluation "
                             "(expertrag eval beir --router oracle); use pilot, centroid, fusion, multitask or fixed:NAME")
        router = self.router()
        if router is None:
            reason = f"the knowledge base has no experts in {self.registry.root}; used the base encoder"
            return RoutedQuery(query, RoutingDecision(BASE_EXPERT, strategy, {}, reason),
                               {BASE_EXPERT: self.encoder.encode([query])[0]})
        if kind == "fusion":
            (decision,) = router.route([query], strategy)
            members = [BASE_EXPERT, *router.domain_experts]
            return RoutedQuery(query, decision, {m: router.encoders.encode([query], m)[0] for m in members})
        vectors, (decision,) = router.encode([query], strategy)
        logger.info("Routed query to expert %r (%s): %s", decision.expert, strategy, decision.similarities)
        return RoutedQuery(query, decision, {decision.expert: vectors[0]})

    def prepare_many(self, queries: list[str], strategy: str) -> list[RoutedQuery]:
        """Route and encode several queries, encoding one batch per chosen expert."""
        kind, _ = parse_strategy(strategy)
        router = self.router()
        if router is None or kind == "fusion":
            return [self.prepare(query, strategy) for query in queries]
        vectors, decisions = router.encode(queries, strategy)
        return [RoutedQuery(query, decision, {decision.expert: vectors[row]})
                for row, (query, decision) in enumerate(zip(queries, decisions))]


def routing_summary(decision: RoutingDecision) -> str:
    """Return one line that names the expert, the strategy, the reason and each candidate's similarity."""
    similarities = ", ".join(f"{name} {value:.4f}" for name, value in
                             sorted(decision.similarities.items(), key=lambda item: -item[1]))
    line = f"routed to expert {decision.expert!r} by strategy {decision.strategy}: {decision.reason}"
    return f"{line}; similarities: {similarities}" if similarities else line
