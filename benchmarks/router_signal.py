"""Routing ceilings, and the agreement of pilot queries with real queries on which expert is best.

The pilot router can only be as good as its pilot queries: it sends a query to the expert
that did best on similar stored queries. This benchmark measures, for the experts of one
folder:

1. Routing ceilings on the test queries of every dataset. The dataset oracle is the best
   single candidate per dataset, as in the router table, and the query oracle the best
   candidate per query. Own-domain routing sends every test query of a dataset to that
   dataset's expert (the base encoder when it has none), as a perfect domain classifier would.
2. For each expert domain, the gain of every candidate over the base encoder on two query
   sets: the domain's held-out stored queries (validation role, never trained on) and the
   dataset's real test queries. The Spearman rank correlation compares the two. A low
   correlation means the stored queries, pseudo-queries for most domains, rank the experts
   differently from real queries.
3. The pilot router with pilots built from all stored queries (the default) and from the
   held-out ones only, with the static and the base-encoder representation.

Per-query nDCG@10 of every candidate is cached in ``--cache`` so a rerun only recomputes
what changed.

Usage::

    python benchmarks/router_signal.py --experts-dir .router_experts

Writes ``benchmarks/results/router_signal.json`` and ``.md``.
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
from expertrag.eval.beir import BeirDataset, BeirEvaluator
from expertrag.eval.embedding_cache import encode_cached
from expertrag.eval.metrics import evaluate_run
from expertrag.eval.router_table import DEFAULT_DATASETS, dense_run
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts import BASE_EXPERT, ExpertRegistry, RouterRetriever
from expertrag.retrievers.experts.pilots import StaticEmbedder, build_library
from expertrag.retrievers.vector_index import VectorIndex
from expertrag.settings import Settings

Scores = dict[str, dict[str, float]]
"""{candidate: {query id: nDCG@10}}."""


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (ties broken by order)."""
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def score_test_queries(router: RouterRetriever, candidates: list[str], name: str, settings: Settings,
                cache: dict[str, Any]) -> tuple[dict[str, str], Scores]:
    """Return (test query texts, per-query nDCG@10 of every candidate) of one dataset, cached by candidate."""
    dataset = BeirDataset.load(settings.data_dir / name, "test")
    evaluator = BeirEvaluator(dataset, router.encoder, settings, "document")
    query_ids = evaluator.query_ids
    texts = [dataset.queries[q] for q in query_ids]
    stored = cache.setdefault(f"test/{name}", {})
    missing = [c for c in candidates if c not in stored]
    if missing:
        vectors = encode_cached(router.encoder, evaluator.unit_texts, settings.cache_dir)
        index = VectorIndex.build(vectors, evaluator.unit_doc_ids, exact_max=len(vectors) + 1)
        for candidate in missing:
            run = dense_run(index, evaluator.unit_doc_ids, query_ids, router.encoders.encode(texts, candidate))
            values = evaluate_run(dataset.qrels, run)[1]
            stored[candidate] = {q: values.get(q, {}).get("ndcg@10", 0.0) for q in query_ids}
    return dict(zip(query_ids, texts)), {c: stored[c] for c in candidates}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts-dir", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=Path(".cache/router_signal.json"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    settings = Settings()
    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    registry = ExpertRegistry(args.experts_dir)
    router = RouterRetriever(registry, encoder)
    candidates = [BASE_EXPERT, *router.domain_experts]
    columns = [*candidates, *([router.multitask_expert] if router.multitask_expert else [])]
    cache: dict[str, Any] = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    if cache.get("experts") != {n: router.experts[n].metadata.get("adapter_sha256") for n in router.experts}:
        cache = {"experts": {n: router.experts[n].metadata.get("adapter_sha256") for n in router.experts}}

    # Stored queries of every domain expert, scored by every candidate, split by role.
    domains, held_out, score_cache = {}, {}, {}
    for name in router.domain_experts:
        roles = {}
        with (args.experts_dir / name / "queries.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                roles[(record["domain"], record["id"])] = record["role"]
        domains[name] = registry.load_domains(name)
        held_out[name] = []
        for domain in domains[name]:
            key = f"{name}/{domain.name}"
            query_ids = sorted(domain.qrels)
            stored = cache.setdefault(f"stored/{key}", {})
            for candidate in columns:
                if candidate not in stored:
                    texts = [domain.queries[q] for q in query_ids]
                    stored[candidate] = domain.ndcg_per_query(router.encoders.encode(texts, candidate), query_ids)
            score_cache[key] = {c: stored[c] for c in candidates}
            held_out[name].append(domain.subset([q for q in query_ids if roles[(domain.name, q)] == "validation"]))

    tests = {name: score_test_queries(router, columns, name, settings, cache) for name in args.datasets}
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.cache, json.dumps(cache).encode("utf-8"))

    def mean_gain(choose: dict[str, dict[str, str]]) -> tuple[float, dict[str, float]]:
        """Mean over datasets of nDCG@10 minus the base encoder's, in points, for per-query choices."""
        per = {}
        for name, (texts, scores) in tests.items():
            per[name] = 100 * float(np.mean([scores[choose[name][q]][q] - scores[BASE_EXPERT][q] for q in texts]))
        return float(np.mean(list(per.values()))), per

    ceilings = {
        "dataset oracle": mean_gain({n: dict.fromkeys(t, max(candidates, key=lambda c: np.mean(list(s[c].values()))))
                                     for n, (t, s) in tests.items()}),
        "query oracle": mean_gain({n: {q: max(candidates, key=lambda c: s[c][q]) for q in t} for n, (t, s) in tests.items()}),
        "own domain": mean_gain({n: dict.fromkeys(t, n if n in candidates else BASE_EXPERT) for n, (t, _) in tests.items()}),
    }
    if router.multitask_expert:
        ceilings["multitask"] = mean_gain({n: dict.fromkeys(t, router.multitask_expert) for n, (t, _) in tests.items()})

    signal = []
    for name in router.domain_experts:
        if name not in tests:
            continue
        key = f"{name}/{domains[name][0].name}"
        validation = held_out[name][0].qrels
        stored = cache[f"stored/{key}"]
        held_out_gain = np.array([np.mean([stored[c][q] - stored[BASE_EXPERT][q] for q in validation])
                                  for c in columns[1:]])
        _, test = tests[name]
        test_gain = np.array([np.mean([test[c][q] - test[BASE_EXPERT][q] for q in test[c]]) for c in columns[1:]])
        signal.append({"domain": name, "held_out_queries": len(validation),
                       "source": registry.get(name).metadata["domains"][0]["source"].get("kind"),
                       "held_out_gain": dict(zip(columns[1:], (100 * held_out_gain).round(2).tolist())),
                       "test_gain": dict(zip(columns[1:], (100 * test_gain).round(2).tolist())),
                       "spearman": round(spearman(held_out_gain, test_gain), 2)})

    static = StaticEmbedder(encoder)
    pilots = {}
    for label, source in (("all stored queries", domains), ("held-out queries", held_out)):
        for representation, represent in (("static", static.embed), ("base", encoder.encode)):
            library = build_library(source, router.encoders, represent, representation, "weighted", label,
                                    router.max_pilot_queries, router.min_group_size, router.min_group_fraction,
                                    router.seed, {k: dict(v) for k, v in score_cache.items()})
            choose = {}
            for name, (texts, _) in tests.items():
                names, similarity = library.pilot_scores(library.transform(represent(list(texts.values()))))
                choose[name] = {q: names[int(np.argmax(row))] for q, row in zip(texts, similarity)}
            pilots[f"{label}, {representation}"] = mean_gain(choose)

    command = "python benchmarks/router_signal.py " + " ".join(argv or sys.argv[1:])
    result = {"command": command, "datasets": list(tests), "ceilings": {k: {"mean": round(v[0], 2), "per_dataset":
              {n: round(x, 2) for n, x in v[1].items()}} for k, v in ceilings.items()},
              "signal": signal, "pilots": {k: {"mean": round(v[0], 2), "per_dataset": {n: round(x, 2) for n, x in v[1].items()}}
                                          for k, v in pilots.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "router_signal.json", (json.dumps(result, indent=2) + "\n").encode("utf-8"))

    lines = ["# What the pilot queries say about real queries", "", f"Regenerate: `{command}`", "",
             f"Experts of `{args.experts_dir}`; test queries of {len(tests)} datasets. Gains are nDCG@10 points over "
             "the base encoder, averaged over datasets.", "", "## Routing ceilings", "",
             "| routing | mean gain |", "|---|---|"]
    lines += [f"| {k} | {v[0]:+.2f} |" for k, v in ceilings.items()]
    lines += ["", "Own domain: every test query of a dataset goes to that dataset's expert, or to the base encoder "
              "when the dataset has none.", "", "## Held-out stored queries against real test queries", "",
              "Gain of each candidate on the domain's held-out stored queries (held) and on its real test queries "
              "(test), and the Spearman rank correlation of the two.", "",
              "| domain | source | | " + " | ".join(columns[1:]) + " | spearman |",
              "|---|---|---|" + "---|" * len(columns[1:]) + "---|"]
    for entry in signal:
        lines.append(f"| {entry['domain']} | {entry['source']} | held | "
                     + " | ".join(f"{entry['held_out_gain'][c]:+.1f}" for c in columns[1:]) + f" | {entry['spearman']:.2f} |")
        lines.append("| | | test | " + " | ".join(f"{entry['test_gain'][c]:+.1f}" for c in columns[1:]) + " | |")
    lines += ["", "## Pilot router by pilot queries and representation", "", "| pilots | mean gain |", "|---|---|"]
    lines += [f"| {k} | {v[0]:+.2f} |" for k, v in pilots.items()]
    atomic_write_bytes(args.out / "router_signal.md", ("\n".join(lines) + "\n").encode("utf-8"))
    print(f"Wrote {args.out / 'router_signal.md'}")


if __name__ == "__main__":
    main()
