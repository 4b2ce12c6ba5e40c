"""BEIR evaluation: nDCG@10, recall@100 and MRR@10 of dense, BM25 and hybrid retrieval on a BEIR folder.

Two granularities: ``document`` encodes each document as one vector of ``title + " " + text``
(how MTEB scores an encoder, truncated at the encoder's maximum length), and ``chunk``
searches the chunks that ingestion makes and scores each document by its best chunk.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from expertrag.errors import InputError
from expertrag.eval.embedding_cache import encode_cached
from expertrag.eval.metrics import evaluate_run
from expertrag.kg_build.chunking import Chunker
from expertrag.kg_build.loaders import BeirLoader, load_qrels, load_queries
from expertrag.kg_build.store import searchable_text
from expertrag.records import Document
from expertrag.retrievers.bm25 import BM25Index
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.fusion import reciprocal_rank_fusion
from expertrag.retrievers.vector_index import VectorIndex
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

Granularity = Literal["document", "chunk"]
EvalRetriever = Literal["dense", "bm25", "hybrid"]
DEPTH = 1000
"""Documents kept per query and retriever: enough for recall@100 after fusion."""


@dataclass
class BeirResult:
    """Mean and per-query metrics of one retriever on one BEIR split."""

    dataset: str
    split: str
    retriever: str
    granularity: str
    encoder: str
    queries: int
    documents: int
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict."""
        return asdict(self)


@dataclass
class BeirDataset:
    """A loaded BEIR split: corpus, judged queries and qrels."""

    name: str
    documents: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @classmethod
    def load(cls, folder: str | Path, split: str = "test") -> "BeirDataset":
        """Read a BEIR folder; documents without text are skipped, as BEIR's loader does."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"Dataset folder not found: {folder}")
        loader = BeirLoader(path=folder, on_error="skip")
        documents = list(loader)
        if loader.skipped:
            logger.info("Skipped %d unusable documents of %s", len(loader.skipped), folder)
        queries = load_queries(folder)
        qrels = load_qrels(folder, split)
        missing = sorted(q for q in qrels if q not in queries)
        if missing:
            raise InputError(f"{len(missing)} judged queries of {folder}/qrels/{split}.tsv are not in queries.jsonl, e.g. {missing[:3]}")
        return cls(folder.name, documents, {q: queries[q] for q in qrels}, qrels)


class BeirEvaluator:
    """Runs retrievers over one dataset, sharing the encoded corpus between them."""

    def __init__(self, dataset: BeirDataset, encoder: Encoder, settings: Settings, granularity: Granularity = "document") -> None:
        if granularity not in ("document", "chunk"):
            raise InputError(f"Unknown granularity {granularity!r}: use document or chunk")
        self.dataset = dataset
        self.encoder = encoder
        self.settings = settings
        self.granularity = granularity
        self.query_ids = list(dataset.queries)
        self.unit_doc_ids, self.unit_texts = self._units()
        self._dense_run: dict[str, dict[str, float]] | None = None
        self._bm25_run: dict[str, dict[str, float]] | None = None

    def _units(self) -> tuple[list[str], list[str]]:
        """Return the searchable texts and the id of the document each belongs to."""
        if self.granularity == "document":
            return ([d.doc_id for d in self.dataset.documents],
                    [f"{d.title} {d.text[len(d.title):].strip()}".strip() if d.title else d.text for d in self.dataset.documents])
        chunker = Chunker(self.encoder.tokenizer, self.settings.chunk_max_tokens, self.settings.chunk_overlap_tokens)
        doc_ids, texts = [], []
        for document in self.dataset.documents:
            for chunk in chunker.chunk(document, self.dataset.name):
                doc_ids.append(document.doc_id)
                texts.append(searchable_text(document.title, chunk.start, chunk.text))
        return doc_ids, texts

    def _to_documents(self, rows: list[list[int]], scores: np.ndarray) -> dict[str, dict[str, float]]:
        """Score each document by its best unit."""
        run: dict[str, dict[str, float]] = {}
        for query_id, row, row_scores in zip(self.query_ids, rows, scores):
            best: dict[str, float] = {}
            for unit, score in zip(row, row_scores):
                if unit < 0:
                    continue
                doc_id = self.unit_doc_ids[unit]
                if doc_id not in best:
                    best[doc_id] = float(score)
            run[query_id] = dict(list(best.items())[:DEPTH])
        return run

    def dense_run(self) -> dict[str, dict[str, float]]:
        """Exact cosine search of every judged query over the encoded units."""
        if self._dense_run is None:
            vectors = encode_cached(self.encoder, self.unit_texts, self.settings.cache_dir, show_progress=False)
            index = VectorIndex.build(vectors, [str(i) for i in range(len(vectors))], exact_max=len(vectors) + 1)
            queries = self.encoder.encode([self.dataset.queries[q] for q in self.query_ids])
            depth = min(len(vectors), DEPTH * (1 if self.granularity == "document" else 4))
            scores, rows = index.index.search(queries, depth)  # type: ignore[attr-defined]
            self._dense_run = self._to_documents(rows.tolist(), scores)
        return self._dense_run

    def bm25_run(self) -> dict[str, dict[str, float]]:
        """BM25 over the same units."""
        if self._bm25_run is None:
            index = BM25Index.build(self.unit_texts, [str(i) for i in range(len(self.unit_texts))])
            depth = min(len(self.unit_texts), DEPTH * (1 if self.granularity == "document" else 4))
            scores, ids = index.search([self.dataset.queries[q] for q in self.query_ids], depth)
            rows = [[int(i) for i in row] for row in ids]
            self._bm25_run = self._to_documents(rows, scores)
        return self._bm25_run

    def hybrid_run(self) -> dict[str, dict[str, float]]:
        """Reciprocal-rank fusion of the dense and BM25 document rankings."""
        dense, bm25 = self.dense_run(), self.bm25_run()
        run = {}
        for query_id in self.query_ids:
            rankings = [list(dense.get(query_id, {})), list(bm25.get(query_id, {}))]
            run[query_id] = dict(reciprocal_rank_fusion(rankings, k=self.settings.rrf_k)[:DEPTH])
        return run

    def evaluate(self, retriever: EvalRetriever, split: str = "test") -> BeirResult:
        """Score one retriever."""
        runs = {"dense": self.dense_run, "bm25": self.bm25_run, "hybrid": self.hybrid_run}
        if retriever not in runs:
            raise InputError(f"Unknown retriever {retriever!r}: use dense, bm25 or hybrid")
        started = time.perf_counter()
        run = runs[retriever]()
        means, per_query = evaluate_run(self.dataset.qrels, run)
        return BeirResult(self.dataset.name, split, retriever, self.granularity, self.encoder.name,
                          len(self.query_ids), len(self.dataset.documents), means, per_query,
                          time.perf_counter() - started)


def run_kb_queries(kb: Any, collection: str, dataset: BeirDataset, retriever: str, chunks: int = 300) -> dict[str, dict[str, float]]:
    """Search an ingested collection with the knowledge base's own retriever; score documents by their best chunk."""
    run: dict[str, dict[str, float]] = {}
    for query_id, text in dataset.queries.items():
        best: dict[str, float] = defaultdict(float)
        for hit in kb.retrieve(text, collection, chunks, retriever):
            if hit.doc_id not in best:
                best[hit.doc_id] = hit.score
        run[query_id] = dict(best)
    return run
