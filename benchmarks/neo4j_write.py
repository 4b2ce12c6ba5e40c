"""Benchmark the Neo4j graph store: batched vs one-query-per-row writes, and vector index recall@10.

Both writers build the same graph in an emptied database from the same record store:
``Neo4jGraphStore.sync`` (``UNWIND $rows ... MERGE`` in batches) and
``Neo4jGraphStore.write_naive`` (one auto-commit query per row, one MERGE per triple).
Throughput is triples (relations) per second of wall time for the whole graph.
Vector recall@10 compares ``db.index.vector.queryNodes`` with an exact cosine search in
numpy over the same vectors, with Neo4j's vector quantization off and on.

Usage::

    python benchmarks/neo4j_write.py                  # generated graph, local server
    python benchmarks/neo4j_write.py --kb demo_kb     # a knowledge base's records.sqlite
    python benchmarks/neo4j_write.py --uri bolt://127.0.0.1:7687

It deletes everything in the target database. Results go to benchmarks/results/neo4j_write.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from expertrag.kg_build.neo4j_server import Neo4jServer  # noqa: E402
from expertrag.kg_build.neo4j_store import Neo4jGraphStore  # noqa: E402
from expertrag.kg_build.store import IngestedDocument, RecordStore  # noqa: E402
from expertrag.records import Chunk, Document, Entity, Extraction, Mention, Relation, content_id  # noqa: E402

logger = logging.getLogger("benchmarks.neo4j_write")

PREDICATES = ["regulates", "inhibits", "activates", "binds", "causes", "treats", "part of", "located in"]
GENERATED_COLLECTION = "generated"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kb", type=Path, default=None,
                        help="knowledge base folder (or its records.sqlite) to read instead of a generated graph")
    parser.add_argument("--collection", default=None,
                        help="collection whose chunk vectors are indexed (default: the first one)")
    parser.add_argument("--uri", default=None, help="Bolt URI of a server to use (default: start a local one)")
    parser.add_argument("--user", default=None, help="Neo4j user (default: no auth)")
    parser.add_argument("--password", default=None, help="Neo4j password")
    parser.add_argument("--documents", type=int, default=1000, help="generated documents (default: 1000)")
    parser.add_argument("--chunks-per-document", type=int, default=2, help="chunks per document (default: 2)")
    parser.add_argument("--entities", type=int, default=2000, help="generated entities (default: 2000)")
    parser.add_argument("--relations", type=int, default=5000, help="generated relation rows (default: 5000)")
    parser.add_argument("--dimensions", type=int, default=384, help="generated vector size (default: 384)")
    parser.add_argument("--queries", type=int, default=200, help="vector queries for recall@10 (default: 200)")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per batched write (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "benchmarks" / "results" / "neo4j_write.json",
                        help="JSON result file (default: benchmarks/results/neo4j_write.json)")
    return parser.parse_args(argv)


# Generated knowledge graph


def clustered_vectors(rng: np.random.Generator, count: int, dimensions: int, clusters: int = 50) -> np.ndarray:
    """Return unit vectors around ``clusters`` random centres, closer to real embeddings than uniform noise."""
    centres = rng.standard_normal((clusters, dimensions))
    vectors = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dimensions))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def generate_record_store(path: Path, arguments: argparse.Namespace) -> RecordStore:
    """Write a random knowledge graph: documents with chunks and vectors, entities, mentions and relations."""
    rng = np.random.default_rng(arguments.seed)
    names = [f"Entity {index}" for index in range(arguments.entities)]
    entity_ids = [content_id("entity", name) for name in names]
    vectors = clustered_vectors(rng, arguments.documents * arguments.chunks_per_document, arguments.dimensions)

    # Relations are spread over the chunks round-robin, so every chunk states a few facts.
    chunk_count = arguments.documents * arguments.chunks_per_document
    relations_by_chunk: dict[int, list[tuple[int, str, int]]] = {}
    for index in range(arguments.relations):
        subject, obj = rng.choice(arguments.entities, size=2, replace=False)
        predicate = PREDICATES[int(rng.integers(len(PREDICATES)))]
        relations_by_chunk.setdefault(index % chunk_count, []).append((int(subject), predicate, int(obj)))

    items = []
    for doc_index in range(arguments.documents):
        doc_id = f"doc-{doc_index}"
        chunks: list[Chunk] = []
        extraction = Extraction()
        texts = []
        offset = 0
        for position in range(arguments.chunks_per_document):
            chunk_index = doc_index * arguments.chunks_per_document + position
            facts = relations_by_chunk.get(chunk_index, [])
            text = " ".join(f"{names[s]} {p} {names[o]}." for s, p, o in facts) or f"Chunk {chunk_index}."
            start, end = offset, offset + len(text)
            offset = end + 1
            texts.append(text)
            chunk_id = content_id(GENERATED_COLLECTION, doc_id, str(start), str(end), text)
            chunks.append(Chunk(chunk_id, doc_id, GENERATED_COLLECTION, position, start, end, text, len(text.split())))
            for subject, predicate, obj in facts:
                for entity in (subject, obj):
                    extraction.entities.append(Entity(entity_ids[entity], names[entity], "CONCEPT"))
                    found = start + text.find(names[entity])
                    extraction.mentions.append(
                        Mention(chunk_id, entity_ids[entity], found, found + len(names[entity]), names[entity]))
                extraction.relations.append(
                    Relation(entity_ids[subject], predicate, entity_ids[obj], chunk_id, start, end, "generated"))
        first = doc_index * arguments.chunks_per_document
        embeddings = vectors[first : first + arguments.chunks_per_document]
        items.append(IngestedDocument(Document(doc_id, "\n".join(texts)), chunks, embeddings, extraction))

    store = RecordStore(path)
    store.ensure_collection(GENERATED_COLLECTION)
    for first in range(0, len(items), 200):
        store.write_documents(GENERATED_COLLECTION, items[first : first + 200])
    return store


def open_record_store(kb: Path) -> RecordStore:
    """Open the record store of a knowledge base folder, or a records.sqlite file given directly."""
    path = kb / "records.sqlite" if kb.is_dir() else kb
    if not path.is_file():
        raise SystemExit(f"error: no record store found at {path}. Pass a knowledge base folder or its records.sqlite.")
    return RecordStore(path)


# Measurements


def clear_database(graph: Neo4jGraphStore) -> None:
    """Delete every node and relationship. Constraints and indexes stay."""
    with graph._driver.session(database=graph.database) as session:
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS").consume()


def record_counts(store: RecordStore) -> dict[str, int]:
    counts = store.counts()
    counts["evidence"] = next(iter(store.iter_table("SELECT COUNT(*) FROM relation_evidence")))[0]
    return counts


def measure_writers(graph: Neo4jGraphStore, store: RecordStore) -> dict[str, Any]:
    """Time the batched and the naive writer on an emptied database and check both built the full graph."""
    expected = record_counts(store)
    triples = expected["relations"]
    elements = sum(expected[key] for key in ("documents", "chunks", "entities", "mentions", "relations"))

    # A first sync lets the JVM compile and Neo4j plan every query that both writers send
    # (they send the same query strings), so neither timed run pays for the warm-up.
    clear_database(graph)
    graph.sync(store)

    clear_database(graph)
    started = time.perf_counter()
    graph.sync(store)
    batched_seconds = time.perf_counter() - started
    batched_counts = graph.counts()
    started = time.perf_counter()
    resync = graph.sync(store)
    resync_seconds = time.perf_counter() - started

    clear_database(graph)
    started = time.perf_counter()
    graph.write_naive(store)
    naive_seconds = time.perf_counter() - started
    naive_counts = graph.counts()

    for name, counts in (("batched", batched_counts), ("naive", naive_counts)):
        for key in ("entities", "relations", "evidence", "chunks", "mentions"):
            if counts[key] != expected[key]:
                raise SystemExit(f"error: the {name} writer stored {counts[key]} {key}, the record store has "
                                 f"{expected[key]}")

    batched_rate = triples / batched_seconds
    naive_rate = triples / naive_seconds
    logger.info("Batched: %.0f triples/s, naive: %.0f triples/s, ratio %.1f", batched_rate, naive_rate,
                batched_rate / naive_rate)
    return {
        "graph": {key: expected[key] for key in ("documents", "chunks", "entities", "mentions", "relations",
                                                 "evidence")},
        "batch_size": graph.batch_size,
        "batched": {"seconds": round(batched_seconds, 3), "triples_per_second": round(batched_rate, 1),
                    "elements_per_second": round(elements / batched_seconds, 1)},
        "naive": {"seconds": round(naive_seconds, 3), "triples_per_second": round(naive_rate, 1),
                  "elements_per_second": round(elements / naive_seconds, 1)},
        "batched_over_naive": round(batched_rate / naive_rate, 2),
        "resync_without_changes": {"seconds": round(resync_seconds, 3), "added": resync.added,
                                   "removed": resync.removed},
    }


def exact_top_k(normalized: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = normalized @ (query / np.linalg.norm(query))
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def measure_recall(graph: Neo4jGraphStore, store: RecordStore, collection: str, queries: int,
                   seed: int, k: int = 10) -> dict[str, Any]:
    """Return recall@k of the Neo4j vector index against exact cosine search, quantization off and on."""
    chunk_ids, matrix = store.chunk_vectors(collection)
    if len(chunk_ids) <= k:
        raise SystemExit(f"error: collection {collection!r} has {len(chunk_ids)} chunks, but recall@{k} needs more than {k}")
    normalized = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed + 1)
    # Queries are perturbed copies of stored vectors, as a question is close to its passage.
    picks = rng.integers(0, len(chunk_ids), queries)
    query_vectors = normalized[picks] + 0.5 * rng.standard_normal((queries, matrix.shape[1])).astype(np.float32) \
        / np.sqrt(matrix.shape[1])
    exact = [{chunk_ids[i] for i in exact_top_k(normalized, query, k)} for query in query_vectors]

    result: dict[str, Any] = {"collection": collection, "vectors": len(chunk_ids),
                              "dimensions": int(matrix.shape[1]), "queries": queries, "k": k}
    for quantization in (False, True):
        started = time.perf_counter()
        graph.write_chunk_vectors(store, collection, quantization=quantization)
        index_seconds = time.perf_counter() - started
        recalls = []
        started = time.perf_counter()
        for query, expected in zip(query_vectors, exact):
            found = {chunk_id for chunk_id, _ in graph.vector_search(query, k=k, collection=collection)}
            recalls.append(len(found & expected) / k)
        query_seconds = time.perf_counter() - started
        name = "quantized" if quantization else "unquantized"
        result[name] = {"recall_at_10": round(float(np.mean(recalls)), 4),
                        "index_write_seconds": round(index_seconds, 2),
                        "mean_query_ms": round(1000 * query_seconds / queries, 2)}
        logger.info("Vector index (%s): recall@%d %.4f", name, k, float(np.mean(recalls)))
    return result


def server_version(graph: Neo4jGraphStore) -> str:
    rows = graph._read("CALL dbms.components() YIELD versions, edition RETURN versions[0] AS version, edition")
    return f"{rows[0]['version']} {rows[0]['edition']}"


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import neo4j

    workdir = Path(tempfile.mkdtemp(prefix="expertrag-neo4j-bench-"))
    server: Neo4jServer | None = None
    results: dict[str, Any] = {}
    try:
        if arguments.kb is not None:
            store = open_record_store(arguments.kb)
            source = str(arguments.kb)
        else:
            started = time.perf_counter()
            store = generate_record_store(workdir / "records.sqlite", arguments)
            logger.info("Generated the record store in %.1f s", time.perf_counter() - started)
            source = "generated"
        collection = arguments.collection or (store.collections() or [GENERATED_COLLECTION])[0]

        uri = arguments.uri
        if uri is None:
            server = Neo4jServer().start()
            uri = server.uri
        graph = Neo4jGraphStore(uri, user=arguments.user, password=arguments.password,
                                batch_size=arguments.batch_size)
        results = {
            "benchmark": "neo4j_write",
            "source": source,
            "neo4j": server_version(graph),
            "driver": f"neo4j-python {neo4j.__version__}",
            "server_start_seconds": round(server.start_seconds, 2) if server and server.start_seconds else None,
            "heap": server.heap if server else None,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "writes": measure_writers(graph, store),
            "vector_index": measure_recall(graph, store, collection, arguments.queries, arguments.seed),
        }
        clear_database(graph)
        graph.close()
        store.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    writes = results["writes"]
    print(f"batched: {writes['batched']['triples_per_second']:.0f} triples/s, "
          f"naive: {writes['naive']['triples_per_second']:.0f} triples/s, "
          f"ratio {writes['batched_over_naive']:.1f}x")
    vectors = results["vector_index"]
    print(f"vector recall@10: {vectors['unquantized']['recall_at_10']:.4f} (quantization off), "
          f"{vectors['quantized']['recall_at_10']:.4f} (on) over {vectors['vectors']} vectors")
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
