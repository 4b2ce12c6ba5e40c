"""nDCG@10 of the hybrid teacher (z-normalized BM25 + base encoder) at several BM25 weights.

The expert teacher (expertrag/retrievers/experts/teacher.py) uses one BM25 weight for every
collection. This benchmark scores the base encoder, BM25 and the hybrid at each weight,
first on the training queries of the sets that have them (which choose the weight), then
on the test queries of every set (which only report it).

    python benchmarks/teacher_hybrid.py --out benchmarks/results/teacher_hybrid
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from expertrag.eval.embedding_cache import encode_cached
from expertrag.eval.metrics import evaluate_run
from expertrag.kg_build.loaders import load_qrels, load_queries
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.data import document_text, load_beir_documents
from expertrag.retrievers.experts.teacher import BM25_DEPTH, z_normalize
from expertrag.settings import Settings

TRAIN_SPLITS = {"scifact": "train", "nfcorpus": "dev", "hotpotqa": "train", "musique": "train"}
TEST_SETS = ["scifact", "nfcorpus", "climate_fever", "mtrag_clapnq", "mtrag_cloud", "mtrag_govt", "cranfield", "cisi",
             "medline", "cacm", "npl", "lisa", "adi", "hotpotqa", "musique"]
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7)


def score_split(folder: Path, split: str, encoder: Encoder, settings: Settings) -> dict[str, float]:
    """Return nDCG@10 of dense, BM25 and each hybrid weight on one split."""
    from expertrag.retrievers.bm25 import BM25Index

    documents = load_beir_documents(folder)
    ids = [d.doc_id for d in documents]
    texts = [document_text(d) for d in documents]
    vectors = encode_cached(encoder, texts, settings.cache_dir)
    qrels = load_qrels(folder, split)
    queries = load_queries(folder)
    query_ids = sorted(q for q in qrels if q in queries)
    dense = encoder.encode([queries[q] for q in query_ids]) @ vectors.T
    lexical = BM25Index.build(texts, ids).score_matrix([queries[q] for q in query_ids], BM25_DEPTH)

    def ndcg(matrix: np.ndarray) -> float:
        top = np.argsort(-matrix, axis=1)[:, :100]
        run = {q: {ids[j]: float(matrix[i, j]) for j in top[i]} for i, q in enumerate(query_ids)}
        return round(evaluate_run({q: qrels[q] for q in query_ids}, run)[0]["ndcg@10"], 4)

    row = {"queries": len(query_ids), "dense": ndcg(dense), "bm25": ndcg(lexical)}
    # The weighted sum of z-scores ranks each query exactly as the teacher's cosine-unit scores do.
    dense_z, lexical_z = z_normalize(dense), z_normalize(lexical)
    for weight in WEIGHTS:
        row[f"hybrid {weight}"] = ndcg(weight * lexical_z + (1 - weight) * dense_z)
    return row


def table_lines(rows: dict[str, dict[str, float]]) -> list[str]:
    columns = ["dense", "bm25", *(f"hybrid {w}" for w in WEIGHTS)]
    lines = ["| dataset | queries | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['queries']} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    means = {c: float(np.mean([row[c] for row in rows.values()])) for c in columns}
    lines.append("| **mean** | | " + " | ".join(f"{means[c]:.4f}" for c in columns) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/teacher_hybrid"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = Settings()
    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    started = time.perf_counter()
    train = {name: score_split(settings.data_dir / name, split, encoder, settings) for name, split in TRAIN_SPLITS.items()}
    test = {name: score_split(settings.data_dir / name, "test", encoder, settings) for name in TEST_SETS}
    train_means = {w: float(np.mean([row[f"hybrid {w}"] for row in train.values()])) for w in WEIGHTS}
    chosen = max(WEIGHTS, key=lambda w: train_means[w])
    result = {"train": train, "test": test, "train_mean_by_weight": train_means, "chosen_weight": chosen,
              "seconds": round(time.perf_counter() - started, 1), "encoder": encoder.name,
              "command": "python benchmarks/teacher_hybrid.py --out " + str(args.out)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Hybrid teacher: z-normalized BM25 + base encoder, nDCG@10 by BM25 weight", "",
             f"Regenerate: `{result['command']}`", "",
             f"Base encoder {encoder.name}, one vector per document (title + text), exact search; BM25 with "
             "bm25s, English stop words and Snowball stemming, exact for each query's best "
             f"{BM25_DEPTH} documents. Each score is z-normalized over the collection per query.", "",
             "## Training queries (these choose the weight)", "", *table_lines(train), "",
             f"Chosen BM25 weight: {chosen} (best mean over the training splits).", "",
             "## Test queries (reported only)", "", *table_lines(test), ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
