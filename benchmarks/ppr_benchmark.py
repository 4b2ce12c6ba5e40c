"""Personalized PageRank: expertrag's sparse power iteration against python-igraph, same graph, same run.

The graph is generated: ``--nodes`` nodes and ``--edges`` undirected weighted edges whose
endpoints follow a Zipf-like distribution, so a few hubs have high degree as in entity
graphs. Each of ``--queries`` seed sets has 1–5 seed nodes. Reported: median latency of
one query for each implementation and their ratio, the batched latency per query when all
seed sets run as one matrix, top-100 agreement (overlap of the two top-100 node sets) and
the largest absolute score difference.

Regenerate: python benchmarks/ppr_benchmark.py --out benchmarks/results/ppr
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def generate_graph(nodes: int, edges: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (sources, targets, weights) of a skewed random undirected graph without self-loops."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, nodes + 1) ** 0.8
    popularity /= popularity.sum()
    sources = rng.choice(nodes, size=edges, p=popularity)
    targets = rng.integers(0, nodes, size=edges)
    keep = sources != targets
    weights = rng.integers(1, 4, size=edges).astype(np.float64)
    return sources[keep], targets[keep], weights[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--damping", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Write PREFIX.json and PREFIX.md.")
    args = parser.parse_args()

    import igraph

    from expertrag.retrievers.ppr import personalized_pagerank, transition_matrix

    sources, targets, weights = generate_graph(args.nodes, args.edges, args.seed)
    started = time.perf_counter()
    symmetric = sp.coo_matrix(
        (np.concatenate([weights, weights]), (np.concatenate([sources, targets]), np.concatenate([targets, sources]))),
        shape=(args.nodes, args.nodes),
    )
    transition, dangling = transition_matrix(symmetric)
    ours_build = time.perf_counter() - started
    started = time.perf_counter()
    graph = igraph.Graph(n=args.nodes, edges=np.column_stack([sources, targets]).tolist(), directed=False)
    graph.es["weight"] = weights.tolist()
    igraph_build = time.perf_counter() - started

    rng = np.random.default_rng(args.seed + 1)
    seed_sets = [rng.choice(args.nodes, size=rng.integers(1, 6), replace=False) for _ in range(args.queries)]
    ours_times, igraph_times, agreements, differences = [], [], [], []
    resets = np.zeros((args.nodes, args.queries))
    for column, seeds in enumerate(seed_sets):
        reset = np.zeros(args.nodes)
        reset[seeds] = 1.0
        resets[:, column] = reset

        started = time.perf_counter()
        ours = personalized_pagerank(transition, dangling, reset, damping=args.damping, tolerance=1e-10)
        ours_times.append(time.perf_counter() - started)

        started = time.perf_counter()
        theirs = np.array(graph.personalized_pagerank(damping=args.damping, reset=reset.tolist(), weights="weight"))
        igraph_times.append(time.perf_counter() - started)

        top_ours = set(np.argsort(-ours)[:100].tolist())
        top_theirs = set(np.argsort(-theirs)[:100].tolist())
        agreements.append(len(top_ours & top_theirs) / 100)
        differences.append(float(np.abs(ours - theirs).max()))

    started = time.perf_counter()
    personalized_pagerank(transition, dangling, resets, damping=args.damping, tolerance=1e-10)
    batched_per_query = (time.perf_counter() - started) / args.queries

    ours_p50, igraph_p50 = statistics.median(ours_times), statistics.median(igraph_times)
    result = {
        "command": "python benchmarks/ppr_benchmark.py" + (f" --out {args.out}" if args.out else ""),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "graph": {"nodes": args.nodes, "edges": int(len(sources)), "damping": args.damping},
        "queries": args.queries,
        "build_s": {"expertrag": ours_build, "igraph": igraph_build},
        "p50_ms": {"expertrag": 1000 * ours_p50, "igraph": 1000 * igraph_p50,
                   "expertrag_batched_per_query": 1000 * batched_per_query},
        "latency_ratio_expertrag_to_igraph": ours_p50 / igraph_p50,
        "batched_ratio_to_igraph": batched_per_query / igraph_p50,
        "top100_agreement_mean": statistics.mean(agreements),
        "top100_agreement_min": min(agreements),
        "max_abs_difference": max(differences),
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        lines = [
            "# Personalized PageRank against python-igraph",
            "",
            f"Regenerate with `{result['command']}` ({result['machine']}).",
            "",
            f"Generated graph: {args.nodes:,} nodes, {len(sources):,} undirected weighted edges, damping {args.damping}, "
            f"{args.queries} seed sets of 1–5 nodes.",
            "",
            "| | expertrag (scipy power iteration) | python-igraph | ratio |",
            "|---|---:|---:|---:|",
            f"| p50 latency per query (ms) | {1000 * ours_p50:.1f} | {1000 * igraph_p50:.1f} | {ours_p50 / igraph_p50:.2f} |",
            f"| batched, per query (ms) | {1000 * batched_per_query:.1f} | – | {batched_per_query / igraph_p50:.2f} |",
            f"| graph build (s) | {ours_build:.2f} | {igraph_build:.2f} | {ours_build / igraph_build:.2f} |",
            "",
            f"Top-100 agreement: mean {statistics.mean(agreements):.3f}, min {min(agreements):.3f}. "
            f"Largest absolute score difference: {max(differences):.2e}.",
            "",
        ]
        args.out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
