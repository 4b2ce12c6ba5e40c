"""Which pseudo-queries train a useful expert? Measured on sets that have real test queries.

For each dataset and method, an expert is trained only on pseudo-queries made from the
corpus (a title, a first sentence or a random sentence cut from a document, or a question
the local LLM writes about it) and then scored on the dataset's real test queries against
the base encoder. Experts are kept even when they would be rejected, so the table shows the
validation gain beside the test gain. Rows with recipe ``in-batch`` were measured
before the hybrid teacher existed, and rows with ``distill`` or ``distill+labels`` after.

Usage:
    python benchmarks/pseudo_queries.py [--datasets scifact:title scifact:first-sentence ...]

Adds its rows to benchmarks/results/pseudo_queries.json (a row of the same dataset and method
is replaced) and rewrites pseudo_queries.md from all rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from expertrag.eval.beir import BeirDataset
from expertrag.eval.embedding_cache import encode_cached
from expertrag.eval.metrics import evaluate_run
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import (
    ExpertEncoders,
    TrainingConfig,
    load_beir_documents,
    pseudo_query_training_data,
    train_expert,
)
from expertrag.retrievers.experts.data import TrainingData, document_text
from expertrag.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RUNS = ["scifact:title", "scifact:first-sentence", "nfcorpus:first-sentence",
                "cranfield:title", "cranfield:first-sentence"]


def ndcg_on_test(dataset: BeirDataset, vectors: np.ndarray, doc_ids: list[str], query_vectors: np.ndarray) -> float:
    data = TrainingData(dataset.name, doc_ids, doc_ids, vectors, dataset.queries, dataset.qrels)
    query_ids = list(dataset.queries)
    means, _ = evaluate_run(dataset.qrels, data.rank(query_vectors, query_ids))
    return means["ndcg@10"]


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_RUNS, help="NAME:METHOD pairs.")
    parser.add_argument("--max-queries", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)

    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    rows = []
    for run in args.datasets:
        name, method = run.split(":")
        folder = settings.data_dir / name
        dataset = BeirDataset.load(folder, "test")
        documents = load_beir_documents(folder)
        doc_ids = [d.doc_id for d in documents]
        vectors = encode_cached(encoder, [document_text(d) for d in documents], settings.cache_dir)
        data = pseudo_query_training_data(name, documents, encoder, method, args.max_queries, 0, settings.cache_dir)  # type: ignore[arg-type]
        started = time.perf_counter()
        config = TrainingConfig(epochs=args.epochs, min_validation_gain=-1.0)
        expert = train_expert(f"{name}-{method}", data, encoder, config)
        seconds = time.perf_counter() - started
        encoders = ExpertEncoders(encoder)
        encoders.add("expert", expert.weights)
        texts = list(dataset.queries.values())
        base = ndcg_on_test(dataset, vectors, doc_ids, encoder.encode(texts))
        tuned = ndcg_on_test(dataset, vectors, doc_ids, encoders.encode(texts, "expert"))
        validation = expert.metrics["validation_ndcg@10"]
        rows.append({"dataset": name, "method": method, "pseudo_queries": len(data.qrels),
                     "validation_base": validation["base"], "validation_expert": validation["expert"],
                     "test_base": round(base, 4), "test_expert": round(tuned, 4), "test_gain": round(tuned - base, 4),
                     "recipe": expert.metrics["chosen_recipe"], "epochs": expert.metrics["chosen_epochs"],
                     "training_seconds": round(seconds, 1)})
        print(rows[-1], flush=True)

    command = "python benchmarks/pseudo_queries.py --datasets " + " ".join(args.datasets) + \
        f" --max-queries {args.max_queries} --epochs {args.epochs}"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "pseudo_queries.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"commands": [], "rows": []}
    new_keys = {(r["dataset"], r["method"]) for r in rows}
    rows = [r for r in previous["rows"] if (r["dataset"], r["method"]) not in new_keys] + rows
    commands = [c for c in previous["commands"] if c != command] + [command]
    path.write_text(json.dumps({"commands": commands, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    lines = ["# Pseudo-query experts scored on real test queries", "",
             "Regenerate (each command adds or replaces its rows):", "",
             *[f"    {c}" for c in commands], "",
             "Experts are trained only on pseudo-queries from the corpus (all-MiniLM-L6-v2 base, query-side LoRA "
             "rank 8, the default recipes; validation is a slice of the pseudo-queries). 2 shared CPU cores.", "",
             "| dataset | method | pseudo-queries | validation base | validation expert | test base | test expert "
             "| test gain | recipe | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['pseudo_queries']} | {r['validation_base']:.4f} | "
                     f"{r['validation_expert']:.4f} | {r['test_base']:.4f} | {r['test_expert']:.4f} | "
                     f"{r['test_gain']:+.4f} | {r.get('recipe', '')} | {r['training_seconds']} |")
    (RESULTS / "pseudo_queries.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
