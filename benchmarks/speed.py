"""Speed of ingestion, encoding and queries, each as a ratio to a bare baseline measured in the same run.

Baselines: a bare sentence-transformers ``encode`` of the same texts, and a bare
"encode the query, search a FAISS flat index" loop over the same chunk vectors.

Usage:
    python benchmarks/speed.py [--documents 300] [--queries 200]

Writes benchmarks/results/speed.json and speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from sentence_transformers import SentenceTransformer

from expertrag.eval.beir import BeirDataset
from expertrag.knowledge_base import KnowledgeBase
from expertrag.retrievers.encoder import Encoder, resolve_encoder_path
from expertrag.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def percentiles(seconds: list[float]) -> tuple[float, float]:
    values = np.array(seconds) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=settings.data_dir / "scifact")
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    dataset = BeirDataset.load(args.dataset)
    documents = dataset.documents[: args.documents]
    queries = list(dataset.queries.values())[: args.queries]
    corpus = Path(tempfile.mkdtemp()) / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text[len(d.title):].strip()})
                                for d in documents) + "\n", encoding="utf-8")

    bare = SentenceTransformer(str(resolve_encoder_path(settings.encoder)), device="cpu")
    ours = Encoder.shared(settings.encoder, "cpu")
    results: dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, {faiss.omp_get_max_threads()} threads",
                                  "documents": len(documents), "queries": len(queries)}

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        with KnowledgeBase.open(Path(folder) / "kb", settings, create=True) as kb:
            kb.ingest(corpus, "bench")
            ingest_seconds = time.perf_counter() - started
            chunk_ids, texts = kb.store.chunk_texts("bench")
            chunk_ids, vectors = kb.store.chunk_vectors("bench")

            started = time.perf_counter()
            bare.encode(texts, batch_size=64, normalize_embeddings=True)
            bare_encode_seconds = time.perf_counter() - started
            started = time.perf_counter()
            ours.encode(texts)
            our_encode_seconds = time.perf_counter() - started

            flat = faiss.IndexFlatIP(vectors.shape[1])
            flat.add(vectors)
            bare_latency = []
            for query in queries:
                started = time.perf_counter()
                flat.search(bare.encode([query], normalize_embeddings=True), 10)
                bare_latency.append(time.perf_counter() - started)
            kb.retrieve(queries[0], "bench", 10, "hybrid")
            latency: dict[str, list[float]] = {}
            for retriever in ("dense", "hybrid", "graph"):
                latency[retriever] = []
                for query in queries:
                    started = time.perf_counter()
                    kb.retrieve(query, "bench", 10, retriever)  # type: ignore[arg-type]
                    latency[retriever].append(time.perf_counter() - started)

    bare_docs_per_second = len(documents) / bare_encode_seconds
    results["ingestion"] = {
        "documents_per_second": len(documents) / ingest_seconds,
        "bare_encode_documents_per_second": bare_docs_per_second,
        "ratio_to_bare_encode": (len(documents) / ingest_seconds) / bare_docs_per_second,
    }
    results["encoding"] = {
        "passages": len(texts),
        "passages_per_second": len(texts) / our_encode_seconds,
        "bare_passages_per_second": len(texts) / bare_encode_seconds,
        "ratio_to_bare": bare_encode_seconds / our_encode_seconds,
    }
    bare_p50, bare_p95 = percentiles(bare_latency)
    results["query_latency_ms"] = {"bare_dense": {"p50": bare_p50, "p95": bare_p95}}
    for retriever, seconds in latency.items():
        p50, p95 = percentiles(seconds)
        results["query_latency_ms"][retriever] = {"p50": p50, "p95": p95, "p50_ratio_to_bare": p50 / bare_p50}  # type: ignore[index]
    results["command"] = "python benchmarks/speed.py"

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    ingestion, encoding, latency_table = results["ingestion"], results["encoding"], results["query_latency_ms"]
    lines = [
        f"# Speed ({len(documents)} SciFact abstracts, {len(queries)} queries, {results['machine']})",
        "",
        "Regenerate: `python benchmarks/speed.py`. Ratios compare with a baseline measured in the same run.",
        "",
        "| measure | expertrag | bare baseline | ratio |",
        "|---|---|---|---|",
        f"| ingestion, documents/s (chunk + encode + spaCy + store + index + RDF) | {ingestion['documents_per_second']:.1f} | "  # type: ignore[index]
        f"{ingestion['bare_encode_documents_per_second']:.1f} (encode only) | {ingestion['ratio_to_bare_encode']:.2f} |",  # type: ignore[index]
        f"| encoding, passages/s | {encoding['passages_per_second']:.1f} | {encoding['bare_passages_per_second']:.1f} | "  # type: ignore[index]
        f"{encoding['ratio_to_bare']:.2f} |",  # type: ignore[index]
    ]
    for retriever in ("dense", "hybrid", "graph"):
        row = latency_table[retriever]  # type: ignore[index]
        lines.append(f"| query p50 / p95 ms, {retriever} | {row['p50']:.1f} / {row['p95']:.1f} | "
                     f"{bare_p50:.1f} / {bare_p95:.1f} | {row['p50_ratio_to_bare']:.2f} (p50) |")
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
