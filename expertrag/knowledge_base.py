"""The knowledge base: one directory that contains a record store, an RDF graph and vector indexes.

Layout::

    manifest.json        format version, models, collections and counts
    records.sqlite       documents, chunks with vectors, entities, mentions, relations, ingest log
    graph.nt             the knowledge graph as RDF (N-Triples), rewritten after each ingest
    indexes/<name>.faiss one FAISS index per collection, rebuilt when its chunks change
    experts/             query-side experts (``expertrag experts train --kb``), used by every collection

The CLI, the REST API and the notebooks are thin layers over this class.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.errors import (
    CollectionNotFoundError,
    EmptyKnowledgeBaseError,
    InputError,
    KnowledgeBaseError,
    KnowledgeBaseNotFoundError,
)
from expertrag.kg_build.chunking import Chunker
from expertrag.kg_build.extraction import SpacyExtractor, load_spacy
from expertrag.kg_build.graph_store import GraphStore, SyncReport
from expertrag.kg_build.loaders import CorpusFormat, OnError, open_corpus
from expertrag.kg_build.pipeline import IngestionPipeline, IngestReport, ProgressCallback
from expertrag.kg_build.rdf import ExportFormat, RdfGraphStore
from expertrag.kg_build.store import Fact, RecordStore
from expertrag.rag.answerer import Answer, Answerer, AnswerMode, content_words
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.fusion import reciprocal_rank_fusion
from expertrag.retrievers.hits import Hit, Retrieval
from expertrag.retrievers.search import GRAPH_RETRIEVERS, CollectionSearcher, Retriever
from expertrag.settings import Settings

if TYPE_CHECKING:
    from expertrag.kg_build.neo4j_store import Neo4jGraphStore
    from expertrag.retrievers.experts.kb_routing import KnowledgeBaseRouter

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class KnowledgeBase:
    """A knowledge base directory opened for reading and writing.

    Example::

        kb = KnowledgeBase.open("kb", create=True)
        kb.ingest("corpus/", collection="papers")
        print(kb.answer("What does protein X regulate?").answer)
    """

    def __init__(self, path: Path, settings: Settings, manifest: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings
        self.manifest = manifest
        self.store = RecordStore(path / "records.sqlite")
        self.graph_store = RdfGraphStore(path / "graph.nt")
        self._lock = threading.RLock()
        self._encoder: Encoder | None = None
        self._searchers: dict[str, CollectionSearcher] = {}
        self._answerer: Answerer | None = None
        self._expert_router: KnowledgeBaseRouter | None = None

    # Opening

    @classmethod
    def open(cls, path: str | Path, settings: Settings | None = None, create: bool = False) -> "KnowledgeBase":
        """Open the knowledge base at ``path``; with ``create`` make a new one when none exists."""
        path = Path(path)
        settings = settings or Settings()
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise KnowledgeBaseError(f"Corrupt manifest {manifest_path}: {error}") from None
            if manifest.get("format_version") != FORMAT_VERSION:
                raise KnowledgeBaseError(
                    f"{path} has knowledge base format {manifest.get('format_version')}, this expertrag reads {FORMAT_VERSION}"
                )
            return cls(path, settings, manifest)
        if not create:
            raise KnowledgeBaseNotFoundError(
                f"No knowledge base at {path}: create one with `expertrag ingest CORPUS --kb {path}`"
            )
        if path.exists() and any(path.iterdir()):
            raise KnowledgeBaseError(f"{path} exists and is not a knowledge base; choose an empty or new folder")
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": time.time(),
            "encoder": settings.encoder,
            "spacy_model": settings.spacy_model,
            "chunking": {"max_tokens": settings.chunk_max_tokens, "overlap_tokens": settings.chunk_overlap_tokens},
            "collections": {},
        }
        kb = cls(path, settings, manifest)
        kb._write_manifest()
        logger.info("Created knowledge base %s", path)
        return kb

    def close(self) -> None:
        """Close the record store."""
        self.store.close()

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def encoder(self) -> Encoder:
        """The base encoder the knowledge base was built with, loaded on first use."""
        if self._encoder is None:
            self._encoder = Encoder.shared(self.manifest["encoder"], self.settings.device, self.settings.encode_batch_size)
        return self._encoder

    def _write_manifest(self) -> None:
        self.manifest["updated_at"] = time.time()
        atomic_write_bytes(self.path / MANIFEST, json.dumps(self.manifest, indent=2).encode("utf-8"))

    # Ingestion

    def ingest(
        self,
        corpus: str | Path,
        collection: str = "default",
        corpus_format: CorpusFormat = "auto",
        on_error: OnError = "raise",
        id_field: str = "_id",
        title_field: str | None = "title",
        text_field: str = "text",
        progress: ProgressCallback | None = None,
        graph_stores: Sequence[GraphStore] = (),
    ) -> IngestReport:
        """Ingest a corpus into ``collection``; documents already stored unchanged are skipped.

        Each of ``graph_stores`` (for example a :meth:`connect_neo4j` store) is synced afterwards,
        besides the embedded RDF file. Connect them before calling, so that an unreachable server
        fails the call before anything is written.
        """
        if not collection or "/" in collection or collection.strip() != collection:
            raise InputError(f"Invalid collection name {collection!r}: use letters, digits, '-' or '_'")
        loader = open_corpus(corpus, corpus_format, on_error, id_field, title_field, text_field)
        chunking = self.manifest["chunking"]
        pipeline = IngestionPipeline(
            store=self.store,
            chunker=Chunker(self.encoder.tokenizer, chunking["max_tokens"], chunking["overlap_tokens"]),
            encoder=self.encoder,
            extractor=SpacyExtractor(load_spacy(self.manifest["spacy_model"]), self.settings.spacy_batch_size),
            batch_documents=self.settings.ingest_batch_documents,
        )
        with self._lock:
            report = pipeline.run(loader, collection, progress)
            self._after_change(collection, graph_stores)
        return report

    def delete_document(self, collection: str, doc_id: str, graph_stores: Sequence[GraphStore] = ()) -> bool:
        """Delete a document and what only it supported; return False when it was not stored."""
        with self._lock:
            deleted = self.store.delete_document(collection, doc_id)
            if deleted:
                self._after_change(collection, graph_stores)
            return deleted

    def connect_neo4j(self, uri: str | None = None, user: str | None = None, password: str | None = None,
                      database: str | None = None) -> Neo4jGraphStore:
        """Connect to a Neo4j server (settings fill what is not given); raises GraphStoreError naming the URI."""
        from expertrag.kg_build.neo4j_store import Neo4jGraphStore

        s = self.settings
        return Neo4jGraphStore(uri or s.neo4j_uri, user or s.neo4j_user, password or s.neo4j_password,
                               database or s.neo4j_database)

    def sync_graph_store(self, graph_store: GraphStore) -> SyncReport:
        """Make ``graph_store`` hold this knowledge base's graph; a second call changes nothing."""
        with self._lock:
            return graph_store.sync(self.store)

    def _after_change(self, collection: str, graph_stores: Sequence[GraphStore] = ()) -> None:
        """Rebuild the collection's vector index and the graph stores, then update the manifest."""
        if self.store.counts(collection)["chunks"]:
            self.searcher(collection).refresh()
        self.graph_store.sync(self.store)
        for graph_store in graph_stores:
            graph_store.sync(self.store)
        self.manifest["collections"] = {name: self.store.counts(name) for name in self.store.collections()}
        self.manifest["counts"] = self.store.counts()
        self._write_manifest()

    # Reading

    def collections(self) -> list[str]:
        """Return the collection names."""
        return self.store.collections()

    def stats(self) -> dict[str, Any]:
        """Return counts per collection and in total."""
        return {
            "path": str(self.path),
            "encoder": self.manifest["encoder"],
            "collections": {name: self.store.counts(name) for name in self.collections()},
            "totals": self.store.counts(),
        }

    def searcher(self, collection: str) -> CollectionSearcher:
        """Return the searcher of one collection."""
        with self._lock:
            if collection not in self._searchers:
                if collection not in self.store.collections():
                    known = ", ".join(self.store.collections()) or "none"
                    raise CollectionNotFoundError(f"Collection {collection!r} not found in {self.path} (collections: {known})")
                self._searchers[collection] = CollectionSearcher(
                    self.store, collection, self.path / "indexes" / f"{collection}.faiss", self.encoder, self.settings
                )
            return self._searchers[collection]

    def _target_collections(self, collection: str | None) -> list[str]:
        names = [collection] if collection else self.collections()
        if not names:
            raise EmptyKnowledgeBaseError(f"The knowledge base {self.path} is empty: ingest a corpus first")
        return names

    def expert_router(self) -> KnowledgeBaseRouter:
        """Return the router over the experts in ``<kb>/experts``, created on first use."""
        from expertrag.retrievers.experts.kb_routing import KnowledgeBaseRouter

        with self._lock:
            if self._expert_router is None:
                self._expert_router = KnowledgeBaseRouter.for_knowledge_base(self.path, self.encoder)
            return self._expert_router

    def retrieve(self, query: str, collection: str | None = None, k: int = 10, retriever: Retriever = "hybrid",
                 router: str | None = None) -> list[Hit]:
        """Return the ``k`` best chunks for ``query`` from one collection, or from all of them fused.

        With ``router`` (a routing strategy: pilot, centroid, fusion, multitask or fixed:NAME),
        dense retrieval encodes the query with the expert that the router picks among the
        experts in ``<kb>/experts``. The result is then a ``RoutedHits`` list whose ``routing``
        names that expert and the similarities behind the choice.
        """
        names = self._target_collections(collection)
        routed = None if router is None else self.expert_router().prepare(query, router)
        if routed is None:
            results = [self.searcher(name).search(query, k, retriever) for name in names]
        else:
            results = [routed.search(self.searcher(name), k, retriever) for name in names]
        if len(results) == 1:
            hits = results[0]
        else:
            by_id = {hit.chunk_id: hit for hits in results for hit in hits}
            fused = reciprocal_rank_fusion([[hit.chunk_id for hit in hits] for hits in results], k=self.settings.rrf_k)
            hits = [by_id[chunk_id] for chunk_id, _ in fused[:k]]
        if routed is None:
            return hits
        from expertrag.retrievers.experts.kb_routing import RoutedHits

        return RoutedHits(hits, routed.decision)

    def retrieval(self, query: str, collection: str | None = None, k: int = 10,
                  retriever: Retriever = "hybrid", query_vector: np.ndarray | None = None) -> Retrieval:
        """Return the ``k`` best chunks for ``query`` with their entity links, relation paths and notes.

        Only the graph retrievers (``graph``, ``graph+hybrid``) fill links, paths and notes.
        ``query_vector`` is the query's normalized embedding when the caller has encoded it already.
        """
        names = self._target_collections(collection)
        results = [self.searcher(name).retrieve(query, k, retriever, query_vector) for name in names]
        if len(results) == 1:
            return results[0]
        by_id = {hit.chunk_id: hit for result in results for hit in result.hits}
        fused = reciprocal_rank_fusion([[hit.chunk_id for hit in r.hits] for r in results], k=self.settings.rrf_k)
        return Retrieval(
            [by_id[chunk_id] for chunk_id, _ in fused[:k]],
            [link for r in results for link in r.links],
            [path for r in results for path in r.paths],
            list(dict.fromkeys(note for r in results for note in r.notes)),
        )

    def facts_for(self, question: str, hits: Sequence[Hit], limit: int | None = None) -> list[Fact]:
        """Return graph facts stated in the hits that share at least two words with the question, best first.

        A fact's words are its subject, predicate and object, so "ADAR1 | form with | Dicer" matches
        "What does ADAR1 form a complex with?" on "adar1" and "form".
        """
        limit = self.settings.graph_facts if limit is None else limit
        question_words = content_words(question)
        scored = []
        for fact in {f.relation_id: f for f in self.store.facts_of_chunks([hit.chunk_id for hit in hits])}.values():
            overlap = len(question_words & content_words(f"{fact.subject} {fact.predicate.replace('_', ' ')} {fact.object}"))
            if overlap >= min(2, len(question_words)):
                scored.append((overlap, fact))
        scored.sort(key=lambda pair: -pair[0])
        return [fact for _, fact in scored[:limit]]

    def evidence_for(self, question: str, hits: Sequence[Hit], relative: bool = True,
                     query_vector: np.ndarray | None = None) -> tuple[list[Hit], list[str]]:
        """Keep the hits similar enough to the question to show the LLM; return them with notes on what was dropped.

        A hit stays when its cosine similarity to the question is at least ``min_dense_score`` and,
        with ``relative``, at least ``relative_dense_score`` times that of the most similar hit.
        ``query_vector`` is the question's base-encoder embedding when the caller has it already.
        """
        if not hits:
            return [], []
        query = self.encoder.encode([question])[0] if query_vector is None else query_vector
        vectors = self.store.vectors_of([hit.chunk_id for hit in hits])
        similarity = {chunk_id: float(vector @ query) for chunk_id, vector in vectors.items()}
        best = max(similarity.values(), default=0.0)
        floor = max(self.settings.min_dense_score, self.settings.relative_dense_score * best if relative else 0.0)
        kept = [hit for hit in hits if similarity.get(hit.chunk_id, 0.0) >= floor]
        notes = []
        if best < self.settings.min_dense_score:
            notes.append(f"best passage similarity {best:.2f} is below {self.settings.min_dense_score}")
        elif len(kept) < len(hits):
            notes.append(f"left out {len(hits) - len(kept)} retrieved passages less similar than {floor:.2f} to the question")
        return kept, notes

    def answerer(self) -> Answerer:
        """Return the answerer with the configured LLM backend, created on first use."""
        if self._answerer is None:
            from expertrag.rag.llm import create_backend

            self._answerer = Answerer(create_backend(self.settings), self.settings.llm_max_tokens)
        return self._answerer

    def answer(self, question: str, collection: str | None = None, k: int | None = None, retriever: Retriever = "hybrid",
               router: str | None = None, mode: AnswerMode = "local") -> Answer:
        """Retrieve evidence for ``question`` and answer it with citations.

        With ``router``, retrieval is routed as in :meth:`retrieve`, and the result is a
        ``RoutedAnswer`` whose ``routing`` is the routing decision.
        ``mode`` "global" answers from community summaries and "pike" from sub-questions,
        see :meth:`answer_in_mode`; "local" answers from the retrieved passages.
        """
        k = k or self.settings.top_k
        if router is not None and mode != "local":
            raise InputError(f"Routing applies to mode 'local' only, not {mode!r}: drop router or use mode local")
        if mode != "local":
            return self.answer_in_mode(question, mode, collection, k, retriever)
        routed = None if router is None else self.expert_router().prepare(question, router)
        if routed is not None and len(routed.vectors) > 1:
            # Fusion merges one result list per expert, so there is no single query vector for retrieval().
            retrieved = self.retrieve(question, collection, k, retriever, router)
            hits, notes = self.evidence_for(question, retrieved)
            answer = self.answerer().answer(question, hits, self.facts_for(question, hits), notes)
            return routed.answer(answer)
        # The base-encoder vector serves both retrieval (unless an expert encodes the query) and the
        # evidence filter, which compares it with the stored base-encoder chunk vectors.
        base_vector = self.encoder.encode([question])[0]
        query_vector = base_vector if routed is None else next(iter(routed.vectors.values()))
        retrieval = self.retrieval(question, collection, k, retriever, query_vector)
        # A multi-hop question's second passage often shares few words with the question, so
        # the graph retrievers keep every passage above the absolute similarity floor.
        hits, notes = self.evidence_for(question, retrieval.hits, relative=retriever not in GRAPH_RETRIEVERS,
                                        query_vector=base_vector)
        answer = self.answerer().answer(question, hits, self._facts_with_paths(question, hits, retrieval),
                                        retrieval.notes + notes)
        answer.links = [link.to_dict() for link in retrieval.links]
        answer.paths = [path.to_dict() for path in retrieval.paths]
        return answer if routed is None else routed.answer(answer)

    def _facts_with_paths(self, question: str, hits: Sequence[Hit], retrieval: Retrieval) -> list[Fact]:
        """Return the question's facts from the hits, then the steps of relation paths whose chunk is among them."""
        facts = self.facts_for(question, hits)
        shown_chunk_ids = {hit.chunk_id for hit in hits}
        known = {fact.relation_id for fact in facts}
        for path in retrieval.paths:
            for step in path.steps:
                if step.chunk_id in shown_chunk_ids and step.relation_id not in known:
                    known.add(step.relation_id)
                    facts.append(step)
        return facts

    def answer_in_mode(self, question: str, mode: AnswerMode, collection: str | None = None, k: int | None = None,
                       retriever: Retriever = "hybrid") -> Answer:
        """Answer ``question`` in ``mode`` and return the answer with its citations.

        "global" map-reduces over the community summaries that ``expertrag communities
        build`` writes. "pike" splits the question into sub-questions, retrieves each with
        ``retriever``, answers them and composes the answer. "local" is :meth:`answer`.
        """
        if mode == "local":
            return self.answer(question, collection, k, retriever)
        if mode == "global":
            from expertrag.rag.global_search import GlobalSearch

            if collection is not None and collection not in self.collections():
                known = ", ".join(self.collections()) or "none"
                raise CollectionNotFoundError(f"Collection {collection!r} not found in {self.path} (collections: {known})")
            search = GlobalSearch(self.store, self.answerer().backend, self.encoder.encode, self.settings)
            return search.answer(question, collection)
        if mode == "pike":
            from expertrag.rag.pike import PikeAnswerer

            pike = PikeAnswerer(self.answerer(), lambda query, count: self.retrieve(query, collection, count, retriever),
                                self.settings.pike_max_sub_questions)
            return pike.answer(question, k or self.settings.top_k)
        raise InputError(f"Invalid answer mode {mode!r}: use local, global or pike")

    def chunk(self, chunk_id: str) -> dict[str, Any] | None:
        """Return one stored chunk as a dict, or None."""
        found = self.store.get_chunks([chunk_id]).get(chunk_id)
        return None if found is None else found.__dict__.copy()

    # RDF

    def export(self, out: str | Path, export_format: ExportFormat = "turtle") -> int:
        """Write the knowledge graph as Turtle, N-Triples or JSON-LD; return the triple count."""
        return self.graph_store.export(Path(out), export_format)

    def sparql(self, query: str) -> list[dict[str, str]]:
        """Run a SPARQL query over the knowledge graph."""
        return self.graph_store.sparql(query)
