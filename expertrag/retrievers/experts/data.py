"""Training data of an expert: queries, their relevant documents, and the collection's base vectors.

Data comes from a BEIR folder's training qrels. A collection without training queries gets
pseudo-queries cut from its own documents instead: a title, a first sentence or a random
sentence (``sentence``) paired with its document, (``ict``, the inverse cloze task) a
sentence paired with its document re-encoded without that sentence, or (``llm``) a question
the local LLM writes about the document.

By default every query is also labeled by the hybrid teacher
(:mod:`expertrag.retrievers.experts.teacher`), and a pseudo-query cut from a document gets
the teacher's best document as its relevant document instead of the one it was cut from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from expertrag.errors import InputError
from expertrag.eval.embedding_cache import encode_cached
from expertrag.eval.metrics import evaluate_run
from expertrag.kg_build.loaders import BeirLoader, load_qrels, load_queries
from expertrag.records import Document
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.teacher import TeacherTargets, hybrid_teacher
from expertrag.settings import Settings

if TYPE_CHECKING:
    from expertrag.rag.llm import LLMBackend

logger = logging.getLogger(__name__)

PseudoQueryMethod = Literal["title", "first-sentence", "auto", "sentence", "ict", "llm"]
PSEUDO_QUERY_METHODS: tuple[str, ...] = ("title", "first-sentence", "auto", "sentence", "ict", "llm")
RANK_DEPTH = 100
"""Documents ranked per query when scoring validation and pilot queries (enough for nDCG@10)."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_METHOD_NEEDS = {
    "title": "It needs documents with a title of at least 3 words and a body: try sentence.",
    "first-sentence": "It needs a first sentence of at least 4 words: try sentence.",
    "auto": "It needs a title of at least 3 words or a first sentence of at least 4 words: try sentence.",
    "sentence": "It needs documents of at least 3 sentences (or over 30 words), one of at least 5 words: "
                "add longer documents or train on real queries with qrels.",
    "ict": "It needs documents of at least 3 sentences (or over 30 words), one of at least 5 words: "
           "add longer documents or train on real queries with qrels.",
    "llm": "The LLM answered no document with a question of at least 3 words: check the LLM settings "
           "(EXPERTRAG_LLM_BACKEND, EXPERTRAG_LLM_MODEL_PATH) or try sentence.",
}


def document_text(document: Document) -> str:
    """Return ``title + " " + body``, the text :class:`~expertrag.eval.beir.BeirEvaluator` encodes.

    Using the same text lets training and evaluation share cached document vectors.
    """
    if not document.title:
        return document.text
    return f"{document.title} {document.text[len(document.title):].strip()}".strip()


@dataclass
class TrainingData:
    """Queries with relevant documents, over the base vectors of the units they search.

    A unit is what the index holds: a whole document for BEIR data, a chunk in a knowledge
    base. ``unit_documents[i]`` is the document of unit ``i``; a document is scored by its
    best unit, and qrels name documents.
    """

    name: str
    unit_ids: list[str]
    unit_documents: list[str]
    unit_vectors: np.ndarray = field(repr=False)
    queries: dict[str, str] = field(repr=False)
    qrels: dict[str, dict[str, int]] = field(repr=False)
    source: dict[str, Any] = field(default_factory=dict)
    teacher: TeacherTargets | None = field(default=None, repr=False)
    """Hybrid-teacher candidates and scores of the queries, when the data was labeled."""

    def __post_init__(self) -> None:
        if len(self.unit_ids) != len(self.unit_vectors) or len(self.unit_ids) != len(self.unit_documents):
            raise ValueError(f"{len(self.unit_ids)} unit ids, {len(self.unit_documents)} unit documents "
                             f"and {len(self.unit_vectors)} vectors must match")
        self._rows_of_document: dict[str, list[int]] | None = None

    @property
    def rows_of_document(self) -> dict[str, list[int]]:
        """Map each document id to the rows of its units."""
        if self._rows_of_document is None:
            rows: dict[str, list[int]] = {}
            for row, doc_id in enumerate(self.unit_documents):
                rows.setdefault(doc_id, []).append(row)
            self._rows_of_document = rows
        return self._rows_of_document

    def content_hash(self) -> str:
        """Return a sha256 of the unit ids, queries and qrels (not the vectors, which the encoder fixes)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(sorted(zip(self.unit_ids, self.unit_documents))).encode())
        for query_id in sorted(self.qrels):
            record = [query_id, self.queries[query_id], sorted(self.qrels[query_id].items())]
            digest.update(json.dumps(record).encode())
        return digest.hexdigest()

    def subset(self, query_ids: list[str]) -> "TrainingData":
        """Return the same units with only ``query_ids``."""
        return TrainingData(self.name, self.unit_ids, self.unit_documents, self.unit_vectors,
                            {q: self.queries[q] for q in query_ids}, {q: self.qrels[q] for q in query_ids},
                            self.source, self.teacher.subset(query_ids) if self.teacher is not None else None)

    def with_teacher(self, unit_texts: list[str], encoder: Encoder, relabel: bool = False) -> "TrainingData":
        """Return this data with hybrid-teacher targets for every query.

        With ``relabel`` (pseudo-queries), the qrels become the teacher's best document.
        """
        targets = hybrid_teacher(self.queries, unit_texts, self.unit_vectors, encoder)
        qrels = targets.qrels(self.unit_documents) if relabel else self.qrels
        source = {**self.source, "teacher": {"kind": "hybrid", "bm25_weight": targets.bm25_weight,
                                             "labels": "teacher" if relabel else "qrels"}}
        return TrainingData(self.name, self.unit_ids, self.unit_documents, self.unit_vectors, self.queries, qrels,
                            source, targets)

    def split(self, validation_fraction: float, seed: int, min_validation: int = 1) -> tuple["TrainingData", "TrainingData"]:
        """Split the queries into (training, validation) with a seeded shuffle of the sorted query ids."""
        query_ids = sorted(self.qrels)
        if len(query_ids) < 2:
            raise InputError(f"{self.name}: {len(query_ids)} training queries; at least 2 are needed to keep a validation slice")
        order = np.random.default_rng(seed).permutation(len(query_ids))
        count = min(len(query_ids) // 2, max(min_validation, int(round(validation_fraction * len(query_ids)))))
        validation = sorted(query_ids[i] for i in order[:count])
        training = sorted(query_ids[i] for i in order[count:])
        return self.subset(training), self.subset(validation)

    def rank(self, query_vectors: np.ndarray, query_ids: list[str], depth: int = RANK_DEPTH) -> dict[str, dict[str, float]]:
        """Rank documents for each query row by its best unit; return a run for :func:`evaluate_run`."""
        scores = query_vectors @ self.unit_vectors.T
        depth = min(depth * 4 if len(self.rows_of_document) < len(self.unit_ids) else depth, len(self.unit_ids))
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth] if depth < scores.shape[1] else np.tile(
            np.arange(scores.shape[1]), (len(scores), 1))
        run: dict[str, dict[str, float]] = {}
        for row, query_id in enumerate(query_ids):
            candidates = top[row][np.argsort(-scores[row, top[row]])]
            best: dict[str, float] = {}
            for unit in candidates:
                doc_id = self.unit_documents[unit]
                if doc_id not in best:
                    best[doc_id] = float(scores[row, unit])
            run[query_id] = best
        return run

    def ndcg_per_query(self, query_vectors: np.ndarray, query_ids: list[str]) -> dict[str, float]:
        """Return nDCG@10 of each query, given its vectors in ``query_ids`` order."""
        run = self.rank(query_vectors, query_ids)
        _, per_query = evaluate_run({q: self.qrels[q] for q in query_ids}, run)
        return {q: values["ndcg@10"] for q, values in per_query.items()}


def load_beir_training_data(
    folder: str | Path, split: str, encoder: Encoder, cache_dir: Path | None = None, name: str | None = None,
    teacher: bool = True,
) -> TrainingData:
    """Read a BEIR folder's corpus and ``qrels/<split>.tsv``, encode the corpus with the base encoder,
    and (with ``teacher``) label the queries with the hybrid teacher.

    Raises:
        InputError: the corpus contains no documents, or the qrels name queries or documents
            that are not in ``queries.jsonl`` or ``corpus.jsonl``. The message names the file and ids.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Dataset folder not found: {folder}")
    documents = _read_documents(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = load_qrels(folder, split)
    if not qrels:
        raise InputError(f"{qrels_path} has no relevance judgements above 0: nothing to train on")
    queries = load_queries(folder)
    missing_queries = sorted(q for q in qrels if q not in queries)
    if missing_queries:
        raise InputError(f"{qrels_path} names {len(missing_queries)} queries that are not in "
                         f"{folder / 'queries.jsonl'}: {', '.join(missing_queries[:10])}")
    known = {document.doc_id for document in documents}
    unknown = sorted({doc for judged in qrels.values() for doc in judged if doc not in known})
    if unknown:
        raise InputError(f"{qrels_path} names {len(unknown)} documents that are not in {folder / 'corpus.jsonl'} "
                         f"(or have no text): {', '.join(unknown[:10])}")

    texts = [document_text(d) for d in documents]
    vectors = encode_cached(encoder, texts, cache_dir)
    ids = [document.doc_id for document in documents]
    logger.info("Loaded %d training queries and %d documents from %s", len(qrels), len(ids), qrels_path)
    data = TrainingData(name or folder.name, ids, ids, vectors, {q: queries[q] for q in qrels}, qrels,
                        {"kind": "qrels", "path": str(folder), "split": split})
    return data.with_teacher(texts, encoder) if teacher else data


def load_beir_documents(folder: str | Path) -> list[Document]:
    """Read the documents of a BEIR folder, skipping records without text (their count is logged).

    Raises:
        InputError: ``corpus.jsonl`` is missing or contains no usable document.
    """
    return _read_documents(Path(folder))


def _read_documents(folder: Path) -> list[Document]:
    loader = BeirLoader(path=folder, on_error="skip")
    documents = list(loader)
    if loader.skipped:
        logger.info("Skipped %d unusable records of %s", len(loader.skipped), loader.path)
    if not documents:
        raise InputError(f"No documents in {loader.path}: the collection must hold at least one document with text")
    return documents


def pseudo_query(document: Document, method: PseudoQueryMethod) -> str | None:
    """Return the pseudo-query of one document, or None when the method finds nothing usable.

    ``title`` uses the title of a document that also has a body. ``first-sentence`` uses the
    body's first sentence, cut to its first 16 words when it is over 32 words long (as in
    texts without sentence punctuation). ``auto`` tries the title, then the first sentence.
    """
    if method not in PSEUDO_QUERY_METHODS or method in ("ict", "sentence", "llm"):
        raise InputError(f"Unknown pseudo-query method {method!r} for one document: use title, first-sentence or auto. "
                         "sentence and ict draw a random sentence and llm asks the LLM: call "
                         "pseudo_query_training_data with them")
    title, body = _title_and_body(document)
    if method in ("title", "auto") and title and body and len(title.split()) >= 3:
        return title
    if method == "title":
        return None
    words = _SENTENCE_END.split(body, maxsplit=1)[0].split()
    if len(words) > 32:
        words = words[:16]
    if len(words) < 4:
        return None
    return " ".join(words)


def _title_and_body(document: Document) -> tuple[str, str]:
    title = document.title.strip()
    if title and document.text.startswith(title):
        return title, document.text[len(title):].strip()
    return title, document.text.strip()


def inverse_cloze_pair(document: Document, rng: np.random.Generator) -> tuple[str, str] | None:
    """Cut one sentence out of a document: return (that sentence, the document text without it).

    The sentence is drawn among those of at least 5 words (cut to 32 words). A body without
    3 sentences is split into 15-word pieces instead, as for texts without punctuation.
    Returns None for a body too short for either.
    """
    title, body = _title_and_body(document)
    pieces = [piece for piece in _SENTENCE_END.split(body) if piece.strip()]
    if len(pieces) < 3:
        words = body.split()
        pieces = [" ".join(words[start : start + 15]) for start in range(0, len(words), 15)]
    candidates = [i for i, piece in enumerate(pieces) if len(piece.split()) >= 5]
    if len(pieces) < 3 or not candidates:
        return None
    chosen = candidates[int(rng.integers(len(candidates)))]
    rest = " ".join(piece for i, piece in enumerate(pieces) if i != chosen)
    return " ".join(pieces[chosen].split()[:32]), f"{title} {rest}".strip()


def pseudo_query_training_data(
    name: str,
    documents: list[Document],
    encoder: Encoder,
    method: PseudoQueryMethod = "auto",
    max_queries: int = 1000,
    seed: int = 0,
    cache_dir: Path | None = None,
    source: dict[str, Any] | None = None,
    teacher: bool = True,
    llm: "LLMBackend | None" = None,
) -> TrainingData:
    """Pair one pseudo-query per sampled document with that document, over all documents' vectors.

    With ``ict`` each sampled document's vector is replaced by that of the document without
    its query sentence; the others keep their full vectors. With ``llm`` the question comes
    from ``llm`` (default: the backend the settings name) and is cached under ``cache_dir``
    (see :mod:`expertrag.retrievers.experts.llm_queries`). With ``teacher`` the queries get
    hybrid-teacher targets; a cut pseudo-query's relevant document becomes the teacher's best
    document, while an LLM question keeps the document it was written from.

    Raises:
        InputError: no document, or no document yields a pseudo-query with ``method``.
        LLMError: the LLM backend failed (``llm`` only).
    """
    if not documents:
        raise InputError(f"{name}: no documents to make pseudo-queries from")
    if method not in PSEUDO_QUERY_METHODS:
        raise InputError(f"Unknown pseudo-query method {method!r}: use {', '.join(PSEUDO_QUERY_METHODS)}")
    texts = [document_text(d) for d in documents]
    vectors = encode_cached(encoder, texts, cache_dir)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(documents))
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    shortened: dict[int, str] = {}
    if method == "llm":
        queries, qrels = _llm_pseudo_queries(name, documents, texts, llm, max_queries, seed, cache_dir)
    else:
        for index in order:
            if method in ("ict", "sentence"):
                pair = inverse_cloze_pair(documents[index], rng)
                text = pair[0] if pair else None
                if pair and method == "ict":
                    shortened[int(index)] = pair[1]
            else:
                text = pseudo_query(documents[index], method)
            if text is None:
                continue
            query_id = f"pseudo:{documents[index].doc_id}"
            queries[query_id] = text
            qrels[query_id] = {documents[index].doc_id: 1}
            if len(queries) >= max_queries:
                break
    if shortened:
        # The unit of each pseudo-queried document becomes the document without its query
        # sentence, so training cannot succeed by matching the sentence word for word.
        rows = sorted(shortened)
        vectors = vectors.copy()
        vectors[rows] = encode_cached(encoder, [shortened[row] for row in rows], cache_dir)
        texts = list(texts)
        for row in rows:
            texts[row] = shortened[row]
    if not queries:
        raise InputError(f"{name}: no document gives a pseudo-query with method {method!r}. {_METHOD_NEEDS[method]}")
    ids = [document.doc_id for document in documents]
    logger.info("Made %d %s pseudo-queries from %d documents of %s", len(queries), method, len(documents), name)
    details = {"kind": "pseudo", "method": method, "max_queries": max_queries, "seed": seed, **(source or {})}
    data = TrainingData(name, ids, ids, vectors, queries, qrels, details)
    # A sentence cut from a document matches it word for word, so the teacher's best document is
    # the better label. An LLM question is no copy, so the document it was written from is its label.
    return data.with_teacher(texts, encoder, relabel=method != "llm") if teacher else data


def _llm_pseudo_queries(
    name: str, documents: list[Document], texts: list[str], llm: "LLMBackend | None", max_queries: int, seed: int,
    cache_dir: Path | None,
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Return (queries, qrels) of LLM questions, each judged relevant to the document it was written about.

    ``llm`` defaults to the backend the settings name, and ``cache_dir`` to the settings' cache folder.
    """
    from expertrag.rag.llm import create_backend
    from expertrag.retrievers.experts.llm_queries import llm_questions

    settings = Settings()
    questions = llm_questions(name, documents, texts, llm or create_backend(settings), max_queries, seed,
                              cache_dir or settings.cache_dir)
    queries = {f"pseudo:{doc_id}": question for doc_id, question in questions.items()}
    qrels = {f"pseudo:{doc_id}": {doc_id: 1} for doc_id in questions}
    return queries, qrels


def collection_training_data(
    store: Any,
    collection: str,
    qrels_folder: str | Path | None = None,
    split: str = "train",
    method: PseudoQueryMethod = "auto",
    max_queries: int = 1000,
    seed: int = 0,
    encoder: Encoder | None = None,
    llm: "LLMBackend | None" = None,
) -> TrainingData:
    """Build training data over a knowledge-base collection's chunks and their stored base vectors.

    With ``qrels_folder``, a BEIR folder whose ``qrels/<split>.tsv`` names the collection's
    document ids, its judged queries are the training queries. Without it, each sampled
    document's first chunk gives one pseudo-query. With method ``llm`` it is a question that
    ``llm`` (by default the backend the settings name) writes about that chunk. With
    ``encoder`` (the collection's base encoder) the queries are labeled by the hybrid teacher
    over the chunk texts, as :func:`pseudo_query_training_data` does.

    Raises:
        InputError: the collection contains no chunks, or the qrels name unknown queries or documents.
    """
    unit_ids, vectors = store.chunk_vectors(collection)
    if not unit_ids:
        raise InputError(f"Collection {collection!r} contains no documents: ingest a corpus into it first")
    chunks = store.get_chunks(unit_ids)
    unit_documents = [chunks[unit].doc_id for unit in unit_ids]
    unit_texts = [chunks[unit].text for unit in unit_ids]
    if qrels_folder is None:
        if method == "ict":
            raise InputError("Pseudo-query method 'ict' re-encodes documents and is not available for a "
                             "knowledge-base collection: use sentence (the default), title, first-sentence or auto, "
                             "or train from --data")
        first_chunks = sorted((c for c in chunks.values() if c.position == 0), key=lambda c: c.doc_id)
        documents = [Document(doc_id=c.doc_id, text=c.text, title=c.title) for c in first_chunks]
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(documents))
        queries: dict[str, str] = {}
        qrels: dict[str, dict[str, int]] = {}
        if method == "llm":
            queries, qrels = _llm_pseudo_queries(collection, documents, [document_text(d) for d in documents], llm,
                                                 max_queries, seed, None)
        else:
            for index in order:
                if method == "sentence":
                    pair = inverse_cloze_pair(documents[index], rng)
                    text = pair[0] if pair else None
                else:
                    text = pseudo_query(documents[index], method)
                if text is not None:
                    queries[f"pseudo:{documents[index].doc_id}"] = text
                    qrels[f"pseudo:{documents[index].doc_id}"] = {documents[index].doc_id: 1}
                if len(queries) >= max_queries:
                    break
        if not queries:
            raise InputError(f"Collection {collection!r}: no document gives a pseudo-query with method {method!r}. "
                             f"{_METHOD_NEEDS[method]}")
        source: dict[str, Any] = {"kind": "pseudo", "method": method, "max_queries": max_queries, "seed": seed,
                                  "collection": collection}
        data = TrainingData(collection, unit_ids, unit_documents, vectors, queries, qrels, source)
        return data.with_teacher(unit_texts, encoder, relabel=method != "llm") if encoder is not None else data

    folder = Path(qrels_folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = load_qrels(folder, split)
    all_queries = load_queries(folder)
    missing = sorted(q for q in qrels if q not in all_queries)
    if missing:
        raise InputError(f"{qrels_path} names {len(missing)} queries that are not in "
                         f"{folder / 'queries.jsonl'}: {', '.join(missing[:10])}")
    known = set(unit_documents)
    unknown = sorted({doc for judged in qrels.values() for doc in judged if doc not in known})
    if unknown:
        raise InputError(f"{qrels_path} names {len(unknown)} documents that are not in collection "
                         f"{collection!r}: {', '.join(unknown[:10])}")
    data = TrainingData(collection, unit_ids, unit_documents, vectors, {q: all_queries[q] for q in qrels}, qrels,
                        {"kind": "qrels", "path": str(folder), "split": split, "collection": collection})
    return data.with_teacher(unit_texts, encoder) if encoder is not None else data
