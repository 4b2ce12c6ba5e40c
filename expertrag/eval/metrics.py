"""Ranking metrics computed with pytrec_eval (the trec_eval implementation BEIR uses)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MEASURES = ("ndcg@10", "recall@100", "mrr@10")


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score a run against qrels; return (mean per measure, per-query values).

    Only queries that have qrels count; a judged query missing from the run scores 0.
    MRR@10 is trec_eval's reciprocal rank over each query's 10 best documents.
    """
    import pytrec_eval

    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if docs}
    full_run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    top10 = {q: dict(sorted(docs.items(), key=lambda item: -item[1])[:10]) for q, docs in full_run.items()}

    main = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(_nonempty(full_run))
    reciprocal = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(_nonempty(top10))

    per_query: dict[str, dict[str, float]] = {}
    for query_id in judged:
        values = main.get(query_id, {})
        per_query[query_id] = {
            "ndcg@10": float(values.get("ndcg_cut_10", 0.0)),
            "recall@100": float(values.get("recall_100", 0.0)),
            "mrr@10": float(reciprocal.get(query_id, {}).get("recip_rank", 0.0)),
        }
    means = {m: float(np.mean([v[m] for v in per_query.values()])) if per_query else 0.0 for m in MEASURES}
    return means, per_query


def _nonempty(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """pytrec_eval skips queries with no documents; they are scored 0 by the caller."""
    return {q: docs for q, docs in run.items() if docs}
