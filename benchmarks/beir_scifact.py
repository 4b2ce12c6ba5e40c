"""SciFact retrieval table: document-level dense (as MTEB scores it), BM25 and fusion, plus the
chunked knowledge-base path for dense, BM25, hybrid and graph expansion.

Usage:
    python benchmarks/beir_scifact.py --kb /path/to/kb_with_scifact [--dataset DIR]

The knowledge base must hold the collection ``scifact`` (``expertrag ingest DIR --kb KB -c scifact``).
Writes benchmarks/results/scifact_beir.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from expertrag.eval.beir import BeirDataset, BeirEvaluator, run_kb_queries
from expertrag.eval.metrics import evaluate_run
from expertrag.knowledge_base import KnowledgeBase
from expertrag.retrievers.encoder import Encoder
from expertrag.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=settings.data_dir / "scifact")
    parser.add_argument("--kb", type=Path, required=True)
    parser.add_argument("--collection", default="scifact")
    args = parser.parse_args()

    dataset = BeirDataset.load(args.dataset)
    rows = []
    evaluator = BeirEvaluator(dataset, Encoder.shared(settings.encoder), settings, "document")
    for retriever in ("dense", "bm25", "hybrid"):
        result = evaluator.evaluate(retriever)
        rows.append({"setting": f"document, {retriever}", **result.metrics, "seconds": round(result.seconds, 1)})
        print(rows[-1], flush=True)

    with KnowledgeBase.open(args.kb, settings) as kb:
        chunks = kb.store.counts(args.collection)["chunks"]
        for retriever in ("dense", "bm25", "hybrid", "graph"):
            started = time.perf_counter()
            run = run_kb_queries(kb, args.collection, dataset, retriever)
            means, _ = evaluate_run(dataset.qrels, run)
            rows.append({"setting": f"knowledge base chunks, {retriever}", **means,
                         "seconds": round(time.perf_counter() - started, 1)})
            print(rows[-1], flush=True)

    payload = {"dataset": str(args.dataset), "queries": len(dataset.qrels), "documents": len(dataset.documents),
               "chunks": chunks, "encoder": settings.encoder, "rows": rows,
               "command": "python benchmarks/beir_scifact.py --kb KB"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scifact_beir.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# SciFact test ({len(dataset.qrels)} claims, {len(dataset.documents)} abstracts, {chunks} chunks)",
        "",
        "Regenerate: `python benchmarks/beir_scifact.py --kb KB` after "
        "`expertrag ingest $EXPERTRAG_DATA_DIR/scifact --kb KB -c scifact`.",
        "",
        "| setting | nDCG@10 | recall@100 | MRR@10 | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['setting']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | {r['seconds']} |" for r in rows]
    (RESULTS / "scifact_beir.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
