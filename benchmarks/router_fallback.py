"""Choose a routing-confidence fallback for the pilot router on training queries only.

The rule under test: route a query to the base encoder unless the pilot router's choice
beats a competitor by at least a margin ``tau``. Two competitors are tried: the runner-up
candidate (``top2``) and the base encoder (``base``). ``tau`` comes from a grid of margin
quantiles.

No test query is used. For every domain expert in the experts folder, the pilot
embeddings are rebuilt from its training-role queries alone, and the rule is scored on
its validation-role queries, which neither the adapter nor the pilots saw. Each query's
nDCG@10 under every candidate comes from the router's cached scores
(``<experts>/_router/scores.json``), so nothing is re-encoded except the cheap static
routing representation. The score is the mean over domains of each domain's mean nDCG@10.

Usage::

    python benchmarks/router_fallback.py --experts-dir .router_experts

Writes ``benchmarks/results/router_fallback.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import BASE_EXPERT, ExpertRegistry, RouterRetriever
from expertrag.retrievers.experts.pilots import StaticEmbedder, build_library
from expertrag.settings import Settings

QUANTILES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
"""Fractions of validation queries whose margin falls below ``tau``; 0.0 is the plain pilot router."""


def validation_rows(experts_dir: Path, aggregate: str) -> list[dict[str, Any]]:
    """Return, per validation query, its domain, the pilot similarities of each candidate and each candidate's nDCG@10."""
    settings = Settings()
    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    registry = ExpertRegistry(experts_dir)
    router = RouterRetriever(registry, encoder)
    router.library()  # builds or loads the score cache of every domain's sampled queries
    cache = json.loads((experts_dir / "_router" / "scores.json").read_text(encoding="utf-8"))["scores"]

    training: dict[str, list[Any]] = {}
    validation = []
    for name in router.domain_experts:
        roles = {}
        with (experts_dir / name / "queries.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                roles[(record["domain"], record["id"])] = record["role"]
        for domain in registry.load_domains(name):
            key = f"{name}/{domain.name}"
            scored = sorted(cache[key][BASE_EXPERT])
            training.setdefault(name, []).append(domain.subset([q for q in scored if roles[(domain.name, q)] == "train"]))
            validation.append((key, domain, [q for q in scored if roles[(domain.name, q)] == "validation"]))

    static = StaticEmbedder(encoder)
    score_cache = {key: dict(value) for key, value in cache.items()}
    library = build_library(training, router.encoders, static.embed, "static", aggregate, "training-only",
                            router.max_pilot_queries, router.min_group_size, router.min_group_fraction, router.seed,
                            score_cache)
    rows = []
    for key, domain, query_ids in validation:
        names, similarities = library.pilot_scores(library.transform(static.embed([domain.queries[q] for q in query_ids])))
        for row, query_id in enumerate(query_ids):
            rows.append({"domain": key, "similarities": dict(zip(names, map(float, similarities[row]))),
                         "ndcg@10": {candidate: cache[key][candidate][query_id] for candidate in cache[key]}})
    return rows


def margin(similarities: dict[str, float], rule: str) -> float:
    """Return how far the best candidate's similarity exceeds the runner-up (``top2``) or the base encoder (``base``)."""
    best = max(similarities, key=similarities.__getitem__)
    if rule == "top2":
        ordered = sorted(similarities.values(), reverse=True)
        return ordered[0] - ordered[1] if len(ordered) > 1 else float("inf")
    return similarities[best] - similarities.get(BASE_EXPERT, float("-inf"))


def score(rows: list[dict[str, Any]], rule: str, tau: float) -> tuple[float, float]:
    """Return (mean over domains of mean nDCG@10, fraction of queries sent to the base encoder) under the rule."""
    by_domain: dict[str, list[float]] = {}
    to_base = 0
    for row in rows:
        best = max(row["similarities"], key=row["similarities"].__getitem__)
        choice = best if best == BASE_EXPERT or margin(row["similarities"], rule) >= tau else BASE_EXPERT
        to_base += choice == BASE_EXPERT
        by_domain.setdefault(row["domain"], []).append(row["ndcg@10"][choice])
    return float(np.mean([np.mean(values) for values in by_domain.values()])), to_base / len(rows)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts-dir", type=Path, required=True)
    parser.add_argument("--aggregate", default="weighted", help="Pilot aggregate: weighted, mean or max.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    rows = validation_rows(args.experts_dir, args.aggregate)
    domains = sorted({row["domain"] for row in rows})
    base_mean = float(np.mean([np.mean([r["ndcg@10"][BASE_EXPERT] for r in rows if r["domain"] == d]) for d in domains]))
    grid = []
    for rule in ("top2", "base"):
        margins = [margin(row["similarities"], rule) for row in rows]
        for quantile in QUANTILES:
            tau = 0.0 if quantile == 0.0 else float(np.quantile(margins, quantile))
            mean, to_base = score(rows, rule, tau)
            grid.append({"rule": rule, "quantile": quantile, "tau": round(tau, 4), "ndcg@10": round(mean, 4),
                         "to_base": round(to_base, 3)})
    chosen = max(grid, key=lambda entry: (entry["ndcg@10"], -entry["quantile"]))
    result = {"command": "python benchmarks/router_fallback.py " + " ".join(argv or sys.argv[1:]),
              "aggregate": args.aggregate, "validation_queries": len(rows), "domains": domains,
              "base_ndcg@10": round(base_mean, 4), "grid": grid, "chosen": chosen}
    atomic_write_bytes(args.out / "router_fallback.json", (json.dumps(result, indent=2) + "\n").encode("utf-8"))

    lines = ["# Routing-confidence fallback for the pilot router, chosen on training queries", "",
             f"Regenerate: `{result['command']}`", "",
             f"{len(rows)} validation-role training queries of {len(domains)} expert domains; pilot embeddings "
             f"rebuilt from the training-role queries only ({args.aggregate} aggregate, static representation). "
             f"Mean over domains of mean nDCG@10; base encoder {base_mean:.4f}.", "",
             "| rule | quantile | tau | nDCG@10 | sent to base |", "|---|---|---|---|---|"]
    lines += [f"| {e['rule']} | {e['quantile']} | {e['tau']} | {e['ndcg@10']:.4f} | {e['to_base']:.3f} |" for e in grid]
    lines += ["", f"Chosen: rule {chosen['rule']}, tau {chosen['tau']} (quantile {chosen['quantile']})."]
    if chosen["quantile"] == 0.0:
        lines.append("No fallback threshold beats the plain pilot router on these queries, so the rule chosen "
                     "is no fallback and the test figures of router_table.md stand unchanged.")
    atomic_write_bytes(args.out / "router_fallback.md", ("\n".join(lines) + "\n").encode("utf-8"))
    print(f"Wrote {args.out / 'router_fallback.json'}: chosen {chosen}")


if __name__ == "__main__":
    main()
