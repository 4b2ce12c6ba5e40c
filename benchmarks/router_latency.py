"""Routed query latency against a plain dense query, measured in the same run, and expert training times.

Plain: ``Encoder.encode([query])`` and an exact FAISS search. Routed: ``RouterRetriever.search``
with one query (pilot routing, then the chosen expert's merged encoder, then the same search).
The two paths alternate query by query, so machine load hits both alike. The routed path is
also timed with the base-encoder routing representation, the two-pass design of
RouterRetriever (Lee et al., 2024), and for batches of queries grouped by expert.

Usage:
    python benchmarks/router_latency.py --experts-dir EXPERTS [--datasets scifact nfcorpus ...] [--queries 300]

Writes benchmarks/results/router_latency.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from expertrag.eval.beir import BeirDataset, BeirEvaluator
from expertrag.eval.embedding_cache import encode_cached
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import ExpertRegistry, RouterRetriever, vector_index_search
from expertrag.retrievers.vector_index import VectorIndex
from expertrag.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000.0, q))


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts-dir", type=Path, required=True)
    parser.add_argument("--index-dataset", default="scifact", help="Dataset whose documents form the searched index.")
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus", "cranfield", "hotpotqa", "mtrag_govt", "npl"],
                        help="Datasets whose test queries are timed (mixed, so routing picks several experts).")
    parser.add_argument("--queries", type=int, default=300, help="Timed single queries per path.")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256, help="Queries per batch in the batched comparison.")
    args = parser.parse_args()

    import torch

    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    dataset = BeirDataset.load(settings.data_dir / args.index_dataset, "test")
    evaluator = BeirEvaluator(dataset, encoder, settings, "document")
    vectors = encode_cached(encoder, evaluator.unit_texts, settings.cache_dir)
    index = VectorIndex.build(vectors, evaluator.unit_doc_ids)
    search = vector_index_search(index)

    pool: list[str] = []
    for name in args.datasets:
        queries = BeirDataset.load(settings.data_dir / name, "test").queries
        pool += list(queries.values())
    rng = random.Random(0)
    rng.shuffle(pool)
    timed = [pool[i % len(pool)] for i in range(args.warmup + args.queries)]

    registry = ExpertRegistry(args.experts_dir)
    routers = {"static": RouterRetriever(registry, encoder, representation="static"),
               "base": RouterRetriever(registry, encoder, representation="base")}
    for router in routers.values():
        router.library()

    times: dict[str, list[float]] = {"plain": [], "routed": [], "routed (base repr.)": []}
    chosen: dict[str, int] = {}
    for position, text in enumerate(timed):
        paths = [("plain", None), ("routed", routers["static"]), ("routed (base repr.)", routers["base"])]
        if position % 2:
            paths.reverse()
        for label, router in paths:
            started = time.perf_counter()
            if router is None:
                search(encoder.encode([text]), 10)
            else:
                result = router.search([text], search, 10)[0]
            elapsed = time.perf_counter() - started
            if position >= args.warmup:
                times[label].append(elapsed)
                if label == "routed":
                    chosen[result.decision.expert] = chosen.get(result.decision.expert, 0) + 1

    batch = [pool[i % len(pool)] for i in range(args.batch)]
    batch_seconds = {}
    for label, run in (("plain", lambda: search(encoder.encode(batch), 10)),
                       ("routed", lambda: routers["static"].search(batch, search, 10))):
        run()
        started = time.perf_counter()
        run()
        batch_seconds[label] = time.perf_counter() - started

    summary = {label: {"p50_ms": round(percentile(values, 50), 2), "p95_ms": round(percentile(values, 95), 2)}
               for label, values in times.items()}
    plain_p50 = summary["plain"]["p50_ms"]
    ratios = {label: round(values["p50_ms"] / plain_p50, 3) for label, values in summary.items()}
    training = {info.name: info.metadata.get("metrics", {}).get("training_seconds") for info in registry.list()}
    command = "python benchmarks/router_latency.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    payload = {
        "command": command,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": encoder.device,
                    "load_average": os.getloadavg()},
        "queries": args.queries, "index_documents": len(evaluator.unit_doc_ids), "latency": summary,
        "p50_ratio_to_plain": ratios, "routed_experts": chosen,
        "batch": {"queries": args.batch, "plain_s": round(batch_seconds["plain"], 3), "routed_s": round(batch_seconds["routed"], 3),
                  "ratio": round(batch_seconds["routed"] / batch_seconds["plain"], 3)},
        "training_seconds": training,
    }
    print(json.dumps(payload, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router_latency.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = ["# Routed query latency vs a plain dense query (same run)", "", f"Regenerate: `{command}`", "",
             f"{payload['machine']['cpus']} CPUs, {payload['machine']['torch_threads']} torch threads, device "
             f"{encoder.device}, load average at the end {tuple(round(x, 2) for x in payload['machine']['load_average'])}. "
             f"{args.queries} single queries per path, alternating, exact search over {len(evaluator.unit_doc_ids)} documents.", "",
             "| path | p50 ms | p95 ms | p50 / plain p50 |", "|---|---|---|---|"]
    for label, values in summary.items():
        lines.append(f"| {label} | {values['p50_ms']} | {values['p95_ms']} | {ratios[label]} |")
    lines += ["", f"Batch of {args.batch} queries: plain {payload['batch']['plain_s']} s, routed (grouped by expert) "
              f"{payload['batch']['routed_s']} s, ratio {payload['batch']['ratio']}.", "",
              f"Experts chosen for the timed queries: {chosen}", "",
              "| expert | training seconds (CPU) |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in training.items()]
    (RESULTS / "router_latency.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
