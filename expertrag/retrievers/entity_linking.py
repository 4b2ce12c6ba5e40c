"""Entity linking: the spans of a query that name graph entities or document titles.

Three methods, tried in this order on spans that no earlier method covered:

1. ``exact``/``alias``: every word n-gram of the query (up to ``MAX_NGRAM`` words) is
   normalized like entity names and looked up among entity names (``exact``) and the
   mention texts that extraction stored (``alias``). The longest non-overlapping spans
   win. Document titles are matched the same way (``title``).
2. ``embedding``: the query's noun chunks and named entities that are still unmatched are
   encoded and compared with the entity-name embeddings; a link needs cosine similarity of
   at least the ``entity_link_threshold`` setting.

Spans that start or end with a stop word never link, and an entity mentioned in more than
``max_chunk_fraction`` of the collection's chunks is too generic to seed a walk.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from expertrag.kg_build.resolution import normalize_name
from expertrag.retrievers.graph_index import GraphIndex

logger = logging.getLogger(__name__)

MAX_NGRAM = 8
LinkMethod = Literal["exact", "alias", "title", "embedding"]
_TOKEN = re.compile(r"\S+")
_EDGE_PUNCTUATION = "\"'“”‘’()[]{},.;:!?"


@functools.lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


@dataclass
class Link:
    """A query span linked to an entity (``entity_id``) or to a document title (``chunk_ids``)."""

    text: str
    start: int
    end: int
    method: LinkMethod
    score: float
    entity_id: str | None = None
    name: str | None = None
    chunk_count: int = 0
    chunk_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the link as a JSON-ready dict."""
        data = asdict(self)
        data["chunk_ids"] = list(self.chunk_ids)
        return data


class EntityLinker:
    """Link query spans to the entities and titles of one collection's graph."""

    def __init__(
        self,
        graph: GraphIndex,
        encode: Callable[[list[str]], np.ndarray] | None = None,
        name_vectors: Callable[[], np.ndarray] | None = None,
        phrases: Callable[[str], list[tuple[int, int]]] | None = None,
        threshold: float = 0.8,
        max_chunk_fraction: float = 0.05,
    ) -> None:
        """Set up name linking, and embedding linking when all three callables are given.

        ``name_vectors`` returns normalized entity-name embeddings, one row per entity
        position. ``phrases`` returns the character spans of a query's noun chunks and
        named entities.
        """
        self.graph = graph
        self.encode = encode
        self.name_vectors = name_vectors
        self.phrases = phrases
        self.threshold = threshold
        self.max_chunks = max(2, int(max_chunk_fraction * max(1, graph.n_chunks)))

    def link(self, query: str) -> list[Link]:
        """Return the links found in ``query``, ordered by their position in it."""
        links = self._link_by_name(query)
        if self.encode is not None and self.name_vectors is not None and self.phrases is not None:
            covered = [(link.start, link.end) for link in links]
            links.extend(self._link_by_embedding(query, covered))
        links.sort(key=lambda link: (link.start, link.method))
        return links

    def _specific(self, positions: list[int]) -> list[int]:
        counts = self.graph.entity_chunk_counts
        return [p for p in positions if 0 < counts[p] <= self.max_chunks]

    def _link_by_name(self, query: str) -> list[Link]:
        tokens = []
        for match in _TOKEN.finditer(query):
            text = match.group()
            start = match.start() + len(text) - len(text.lstrip(_EDGE_PUNCTUATION))
            end = match.end() - (len(text) - len(text.rstrip(_EDGE_PUNCTUATION)))
            if start < end:
                tokens.append((start, end))
        stop_words = _stop_words()
        words = [query[s:e].lower() for s, e in tokens]
        candidates: list[tuple[int, int, int, str]] = []
        for i in range(len(tokens)):
            for j in range(i + 1, min(len(tokens), i + MAX_NGRAM) + 1):
                start, end = tokens[i][0], tokens[j - 1][1]
                key = normalize_name(query[start:end])
                # A span that starts or ends with a stop word ("the Sorbonne") is left to the shorter one.
                if not key or words[i] in stop_words or words[j - 1] in stop_words:
                    continue
                if key in self.graph.aliases or key in self.graph.titles:
                    candidates.append((j - i, start, end, key))

        # Longest spans first; a span overlapping a chosen one is dropped.
        candidates.sort(key=lambda c: (-c[0], c[1]))
        chosen: list[tuple[int, int]] = []
        links: list[Link] = []
        for _, start, end, key in candidates:
            if any(start < e and s < end for s, e in chosen):
                continue
            found = self._links_for_key(query[start:end], start, end, key)
            if found:
                chosen.append((start, end))
                links.extend(found)
        return links

    def _links_for_key(self, text: str, start: int, end: int, key: str) -> list[Link]:
        links = []
        chunk_positions = self.graph.titles.get(key, [])
        if chunk_positions:
            chunk_ids = tuple(self.graph.chunk_ids[p] for p in chunk_positions)
            links.append(Link(text, start, end, "title", 1.0, chunk_count=len(chunk_ids), chunk_ids=chunk_ids))
        for position in self._specific(self.graph.aliases.get(key, [])):
            name = self.graph.entity_names[position]
            method: LinkMethod = "exact" if normalize_name(name) == key else "alias"
            links.append(Link(text, start, end, method, 1.0, self.graph.entity_ids[position], name,
                              int(self.graph.entity_chunk_counts[position])))
        return links

    def _link_by_embedding(self, query: str, covered: list[tuple[int, int]]) -> list[Link]:
        assert self.encode is not None
        assert self.name_vectors is not None
        assert self.phrases is not None
        spans = [(s, e) for s, e in self.phrases(query) if not any(s < ce and cs < e for cs, ce in covered)]
        spans = [(s, e) for s, e in spans if normalize_name(query[s:e])]
        if not spans:
            return []
        names = self.name_vectors()
        if names.shape[0] == 0:
            return []
        vectors = self.encode([query[s:e] for s, e in spans])
        similarity = vectors @ names.T
        links = []
        for (start, end), row in zip(spans, similarity):
            # Consider the 5 nearest names; generic entities are skipped like exact matches are.
            for position in np.argsort(-row)[:5]:
                score = float(row[position])
                if score < self.threshold:
                    break
                if self._specific([int(position)]):
                    links.append(Link(query[start:end], start, end, "embedding", score,
                                      self.graph.entity_ids[position], self.graph.entity_names[position],
                                      int(self.graph.entity_chunk_counts[position])))
                    break
        return links
