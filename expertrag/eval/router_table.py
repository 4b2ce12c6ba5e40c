"""Router evaluation over many BEIR datasets, written as one nDCG@10 table.

Rows are datasets and the last row is the mean. The columns are BM25, the base encoder,
every expert applied to every dataset, the multitask expert and the routing strategies:
pilot (with the static and with the base-encoder representation), centroid and fusion.
The oracle column is the best single candidate per dataset, picked with the test judgements.

Every dense column searches the same exact index of base-encoded documents. A routed
query takes the ranking its chosen expert produces for it, which is what
``RouterRetriever.encode`` followed by a search returns.

Usage::

    python -m expertrag.eval.router_table --experts-dir EXPERTS --train-missing \\
        --datasets scifact nfcorpus cranfield ...

With ``--train-missing`` the experts of :data:`EXPERT_PLAN` that are not registered yet are
trained first, then the multitask expert. Writes ``<out>/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.eval.beir import DEPTH, BeirDataset, BeirEvaluator
from expertrag.eval.embedding_cache import encode_cached
from expertrag.eval.metrics import evaluate_run
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.adapter import BASE_EXPERT
from expertrag.retrievers.experts.registry import ExpertRegistry
from expertrag.retrievers.experts.router import FUSION_DEPTH, RouterRetriever, fuse_rankings
from expertrag.retrievers.vector_index import VectorIndex
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]

EXPERT_PLAN: dict[str, dict[str, str]] = {
    "scifact": {"source": "qrels", "split": "train"},
    "nfcorpus": {"source": "qrels", "split": "dev"},
    "hotpotqa": {"source": "qrels", "split": "train"},
    "musique": {"source": "qrels", "split": "train"},
    "cranfield": {"source": "pseudo"},
    "cisi": {"source": "pseudo"},
    "cacm": {"source": "pseudo"},
    "npl": {"source": "pseudo"},
    "lisa": {"source": "pseudo"},
    "mtrag_govt": {"source": "pseudo"},
    "mtrag_cloud": {"source": "pseudo"},
    "climate_fever": {"source": "pseudo"},
}
"""Expert of each dataset and its training data source. adi, medline and mtrag_clapnq get none,
so they measure routing on domains without an expert (each has a related domain that has one)."""

DEFAULT_DATASETS = ["scifact", "nfcorpus", "climate_fever", "mtrag_clapnq", "mtrag_cloud", "mtrag_govt", "cranfield",
                    "cisi", "medline", "cacm", "npl", "lisa", "adi", "hotpotqa", "musique"]


def dense_run(index: VectorIndex, doc_ids: list[str], query_ids: list[str], vectors: np.ndarray) -> Run:
    """Search the exact document index with query vectors; return the top ``DEPTH`` documents per query."""
    scores, rows = index.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(DEPTH, len(doc_ids)))  # type: ignore[attr-defined]
    return {q: {doc_ids[r]: float(s) for r, s in zip(row, row_scores) if r >= 0}
            for q, row, row_scores in zip(query_ids, rows, scores)}


def fused_run(runs: list[Run], query_ids: list[str]) -> Run:
    """Reciprocal-rank fusion of the top ``FUSION_DEPTH`` documents of each run, as the router's fusion does."""
    fused: Run = {}
    for query_id in query_ids:
        rankings = [list(run.get(query_id, {}))[:FUSION_DEPTH] for run in runs]
        fused[query_id] = dict(fuse_rankings(rankings)[:DEPTH])
    return fused


def seen_positive_split(router: RouterRetriever, dataset: BeirDataset) -> dict[str, list[str]] | None:
    """Split test queries by whether any relevant document was a training positive of the dataset's own expert.

    Returns None when no qrels-trained expert was trained on this dataset's name.
    """
    owner = next((name for name in router.domain_experts
                  if any(d.get("name") == dataset.name and d.get("source", {}).get("kind") == "qrels"
                         for d in router.experts[name].metadata.get("domains", []))), None)
    if owner is None:
        return None
    positives = {doc for domain in router.registry.load_domains(owner) if domain.name == dataset.name
                 for judged in domain.qrels.values() for doc in judged}
    seen = [q for q, judged in dataset.qrels.items() if positives & set(judged)]
    unseen = [q for q in dataset.qrels if q not in set(seen)]
    return {"expert": owner, "seen": seen, "unseen": unseen}  # type: ignore[dict-item]


def evaluate_dataset(folder: Path, split: str, routers: dict[str, RouterRetriever], settings: Settings) -> dict[str, Any]:
    """Score every column of the table on one dataset. The experts come from ``routers["static"]``."""
    started = time.perf_counter()
    router = routers["static"]
    encoder = router.encoder
    dataset = BeirDataset.load(folder, split)
    evaluator = BeirEvaluator(dataset, encoder, settings, "document")
    query_ids = evaluator.query_ids
    texts = [dataset.queries[q] for q in query_ids]

    runs: dict[str, Run] = {"bm25": evaluator.bm25_run()}
    doc_vectors = encode_cached(encoder, evaluator.unit_texts, settings.cache_dir)
    index = VectorIndex.build(doc_vectors, evaluator.unit_doc_ids, exact_max=len(doc_vectors) + 1)
    candidates = [BASE_EXPERT, *router.domain_experts]
    experts = [*candidates, *([router.multitask_expert] if router.multitask_expert else [])]
    for name in experts:
        runs[name] = dense_run(index, evaluator.unit_doc_ids, query_ids, router.encoders.encode(texts, name))

    routing: dict[str, dict[str, int]] = {}
    for column, representation_router, strategy in (("pilot", router, "pilot"),
                                                    ("pilot (base repr.)", routers.get("base"), "pilot"),
                                                    ("centroid", router, "centroid")):
        if representation_router is None:
            continue
        decisions = representation_router.route(texts, strategy)
        runs[column] = {q: runs[d.expert][q] for q, d in zip(query_ids, decisions)}
        counts: dict[str, int] = {}
        for decision in decisions:
            counts[decision.expert] = counts.get(decision.expert, 0) + 1
        routing[column] = dict(sorted(counts.items(), key=lambda item: -item[1]))
    runs["fusion"] = fused_run([runs[name] for name in candidates], query_ids)

    scores: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    for column, run in runs.items():
        means, values = evaluate_run(dataset.qrels, run)
        scores[column] = means["ndcg@10"]
        per_query[column] = {q: v["ndcg@10"] for q, v in values.items()}
    oracle = max(candidates, key=lambda name: scores[name])
    scores["oracle"] = scores[oracle]
    scores["oracle (per query)"] = float(np.mean([max(per_query[c][q] for c in candidates) for q in dataset.qrels]))

    result: dict[str, Any] = {"dataset": dataset.name, "split": split, "queries": len(query_ids),
                              "documents": len(dataset.documents), "ndcg@10": scores, "oracle_expert": oracle,
                              "routing": routing, "seconds": round(time.perf_counter() - started, 1)}
    split_ids = seen_positive_split(router, dataset)
    if split_ids is not None:
        owner = split_ids["expert"]
        result["training_positive_split"] = {
            "expert": owner,
            **{part: {"queries": len(split_ids[part]),
                      **{column: round(float(np.mean([per_query[column][q] for q in split_ids[part]])), 4)
                         if split_ids[part] else None for column in (BASE_EXPERT, owner, "pilot")}}
               for part in ("seen", "unseen")}}
    logger.info("%s: %s", dataset.name, {k: round(v, 4) for k, v in scores.items()})
    return result


def parse_plan(entries: list[str]) -> dict[str, dict[str, str]]:
    """Parse ``NAME=qrels:SPLIT`` and ``NAME=pseudo`` entries into an expert plan."""
    plan = {}
    for entry in entries:
        name, _, source = entry.partition("=")
        kind, _, split = source.partition(":")
        if not name or kind not in ("qrels", "pseudo") or (kind == "qrels" and not split):
            raise ValueError(f"Invalid plan entry {entry!r}: use NAME=qrels:SPLIT or NAME=pseudo")
        plan[name] = {"source": kind, "split": split} if kind == "qrels" else {"source": kind}
    return plan


def train_missing_experts(registry: ExpertRegistry, datasets: list[str], settings: Settings, encoder: Encoder,
                          plan: dict[str, dict[str, str]], pseudo_method: str, max_pseudo_queries: int, epochs: int,
                          multitask_queries_per_domain: int) -> dict[str, Any]:
    """Train the planned experts that are not registered, then the multitask expert; return the rejections.

    Rejected experts are recorded with :meth:`ExpertRegistry.record_rejection` and not retrained
    on a later run.
    """
    from expertrag.retrievers.experts import (
        ExpertRejectedError,
        TrainingConfig,
        load_beir_documents,
        load_beir_training_data,
        pseudo_query_training_data,
        train_expert,
    )
    rejections = registry.rejections()
    for name in [name for name in plan if name in datasets]:
        entry = plan[name]
        if entry is None or name in registry.names() or name in rejections:
            continue
        folder = settings.data_dir / name
        if entry["source"] == "qrels":
            data = load_beir_training_data(folder, entry["split"], encoder, settings.cache_dir, name)
        else:
            data = pseudo_query_training_data(name, load_beir_documents(folder), encoder, pseudo_method,  # type: ignore[arg-type]
                                              max_pseudo_queries, 0, settings.cache_dir, {"path": str(folder)})
        try:
            # recipes=None picks them from the data: distill for teacher-labeled pseudo-queries,
            # distill+labels and distill for judged queries and LLM questions.
            registry.add(train_expert(name, data, encoder, TrainingConfig(epochs=epochs, device=settings.device)))
        except ExpertRejectedError as error:
            logger.warning("%s", error)
            registry.record_rejection(name, {"message": str(error), **error.report})

    if "multitask" not in registry.names() and "multitask" not in rejections:
        domains = [d for info in registry.list() if info.kind == "domain" for d in registry.load_domains(info.name)]
        if domains:
            config = TrainingConfig(epochs=epochs, max_training_queries=multitask_queries_per_domain, device=settings.device)
            try:
                registry.add(train_expert("multitask", domains, encoder, config, kind="multitask"))
            except ExpertRejectedError as error:
                logger.warning("%s", error)
                registry.record_rejection("multitask", {"message": str(error), **error.report})
    return registry.rejections()


def build_table(datasets: list[str], registry: ExpertRegistry, settings: Settings, encoder: Encoder,
                aggregate: str = "weighted") -> dict[str, Any]:
    """Evaluate every dataset (``NAME`` or ``NAME:SPLIT`` under the data folder, default split ``test``) and add the mean row."""
    entries = []
    for entry in datasets:
        name, _, split = entry.partition(":")
        entries.append((settings.data_dir / name, split or "test"))
    return build_folder_table(entries, registry, settings, encoder, aggregate)


def build_folder_table(entries: list[tuple[Path, str]], registry: ExpertRegistry, settings: Settings, encoder: Encoder,
                       aggregate: str = "weighted") -> dict[str, Any]:
    """Evaluate every (BEIR folder, qrels split) and add the mean row."""
    routers = {"static": RouterRetriever(registry, encoder, representation="static", aggregate=aggregate),
               "base": RouterRetriever(registry, encoder, representation="base", aggregate=aggregate)}
    rows = [evaluate_dataset(folder, split, routers, settings) for folder, split in entries]
    columns = list(rows[0]["ndcg@10"]) if rows else []
    mean = {column: float(np.mean([row["ndcg@10"][column] for row in rows])) for column in columns}
    experts = {info.name: {"kind": info.kind,
                           "domains": [d["name"] for d in info.metadata.get("domains", [])],
                           "source": [d.get("source", {}).get("kind") for d in info.metadata.get("domains", [])],
                           "validation_ndcg@10": info.metadata.get("metrics", {}).get("validation_ndcg@10"),
                           "chosen_recipe": info.metadata.get("metrics", {}).get("chosen_recipe"),
                           "chosen_epochs": info.metadata.get("metrics", {}).get("chosen_epochs"),
                           "training_seconds": info.metadata.get("metrics", {}).get("training_seconds"),
                           "training_queries": info.metadata.get("metrics", {}).get("training_queries")}
               for info in registry.list()}
    library = routers["static"].library()
    return {"encoder": encoder.name, "experts": experts, "columns": columns, "rows": rows, "mean": mean,
            "pilots": {"experts": library.pilot_experts, "domains": library.pilot_domains,
                       "sizes": library.pilot_sizes, "assignments": library.assignments, "aggregate": aggregate}}


def summary_lines(table: dict[str, Any]) -> list[str]:
    """Return Markdown lines comparing the pilot router's mean nDCG@10 with the base encoder and multitask."""
    mean = table["mean"]
    lines = [f"Pilot router mean minus base encoder mean: {100 * (mean['pilot'] - mean[BASE_EXPERT]):+.2f} nDCG@10 points."]
    multitask = next((name for name, info in table["experts"].items() if info["kind"] == "multitask"), None)
    if multitask and multitask in mean:
        lines.append(f"Pilot router mean minus multitask mean: {100 * (mean['pilot'] - mean[multitask]):+.2f} points.")
    worse = [f"{row['dataset']} ({100 * (row['ndcg@10']['pilot'] - row['ndcg@10'][BASE_EXPERT]):+.2f})"
             for row in table["rows"] if row["ndcg@10"]["pilot"] < row["ndcg@10"][BASE_EXPERT] - 0.01]
    lines.append(f"Datasets where the pilot router is more than 1.0 point below the base encoder: {', '.join(worse) or 'none'}.")
    return lines


def write_table(table: dict[str, Any], out: Path, name: str, command: str) -> tuple[Path, Path]:
    """Write the table as JSON and Markdown; return both paths."""
    table = {**table, "command": command}
    json_path, markdown_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_bytes(json_path, (json.dumps(table, indent=2) + "\n").encode("utf-8"))

    qrels_splits = sorted({row["split"] for row in table["rows"]})
    lines = ["# nDCG@10 of BM25, the base encoder, each expert and the router", "",
             f"Regenerate: `{command}`", "",
             f"Base encoder {table['encoder']}, one vector per document (title + text), exact search over each "
             f"dataset's documents; qrels split {', '.join(qrels_splits)}. Expert columns apply one expert to every "
             f"dataset. Pilot routing uses the {table['pilots']['aggregate']} aggregate over pilot embeddings; the "
             "oracle is the best of the base encoder and the domain experts per dataset.", ""]
    lines += _score_lines(table)
    lines += ["", *summary_lines(table), "", "Routing decisions of the pilot router (static representation) per dataset:", ""]
    lines += [f"- {row['dataset']}: {row['routing'].get('pilot', {})}" for row in table["rows"]]
    lines += _positive_split_lines(table)
    lines += _expert_lines(table)
    atomic_write_bytes(markdown_path, ("\n".join(lines) + "\n").encode("utf-8"))
    return json_path, markdown_path


def _score_lines(table: dict[str, Any]) -> list[str]:
    """The nDCG@10 table with each row's best column in bold and the mean row last."""
    columns = [c for c in table["columns"] if c != "oracle (per query)"]
    header = ["dataset", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        scores = row["ndcg@10"]
        best = max(scores[c] for c in columns if c != "oracle")
        cells = [f"**{scores[c]:.4f}**" if scores[c] == best else f"{scores[c]:.4f}" for c in columns]
        lines.append(f"| {row['dataset']} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"{table['mean'][c]:.4f}" for c in columns) + " |")
    return lines


def _positive_split_lines(table: dict[str, Any]) -> list[str]:
    """nDCG@10 on test queries with and without a relevant document among the own expert's training positives."""
    rows = [row for row in table["rows"] if "training_positive_split" in row]
    if not rows:
        return []
    lines = ["", "Test queries split by whether a relevant document was a training positive of the dataset's "
             "own expert (a gain only on `seen` is a document prior):", "",
             "| dataset | part | queries | base | own expert | pilot |", "|---|---|---|---|---|---|"]
    for row in rows:
        split = row["training_positive_split"]
        for part in ("seen", "unseen"):
            values = split[part]
            if values["queries"]:
                lines.append(f"| {row['dataset']} | {part} | {values['queries']} | {values[BASE_EXPERT]:.4f} | "
                             f"{values[split['expert']]:.4f} | {values['pilot']:.4f} |")
    return lines


def _expert_lines(table: dict[str, Any]) -> list[str]:
    """Validation scores and CPU training time of every registered and every rejected expert."""
    lines = ["", "| expert | kind | training queries | validation base | validation expert | recipe | epochs | training s |",
             "|---|---|---|---|---|---|---|---|"]
    for expert_name, info in table["experts"].items():
        validation = info.get("validation_ndcg@10") or {}
        lines.append(f"| {expert_name} | {info['kind']} | {info['training_queries']} | {validation.get('base')} | "
                     f"{validation.get('expert')} | {info['chosen_recipe']} | {info['chosen_epochs']} | "
                     f"{info['training_seconds']} |")
    for expert_name, rejection in table.get("rejected", {}).items():
        validation = rejection.get("validation_ndcg@10", {})
        lines.append(f"| {expert_name} | rejected | {rejection.get('training_queries')} | {validation.get('base')} | "
                     f"{validation.get('expert')} | {rejection.get('chosen_recipe')} | {rejection.get('chosen_epochs')} | "
                     f"{rejection.get('training_seconds')} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see the module docstring."""
    settings = Settings()
    parser = argparse.ArgumentParser(description="Evaluate experts and routing strategies over many BEIR datasets.")
    parser.add_argument("--experts-dir", type=Path, required=True, help="Experts folder (for example <kb>/experts).")
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, help="Dataset folders under the data dir, NAME or NAME:SPLIT.")
    parser.add_argument("--train-missing", action="store_true", help="Train the planned experts that are missing, and multitask.")
    parser.add_argument("--plan", nargs="+", help="Experts to train instead of EXPERT_PLAN: NAME=qrels:SPLIT or NAME=pseudo.")
    parser.add_argument("--pseudo-method", default="sentence", help="Pseudo-query method of the pseudo-query experts.")
    parser.add_argument("--max-pseudo-queries", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--multitask-queries-per-domain", type=int, default=300)
    parser.add_argument("--aggregate", default="weighted", help="Pilot aggregate: weighted, mean or max.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="router_table")
    parser.add_argument("--regenerate", help="Command recorded as the way to regenerate the table (default: this one).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)

    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    registry = ExpertRegistry(args.experts_dir)
    if args.train_missing:
        plan = parse_plan(args.plan) if args.plan else EXPERT_PLAN
        train_missing_experts(registry, [d.partition(":")[0] for d in args.datasets], settings, encoder, plan,
                              args.pseudo_method, args.max_pseudo_queries, args.epochs, args.multitask_queries_per_domain)
    table = build_table(args.datasets, registry, settings, encoder, args.aggregate)
    table["rejected"] = registry.rejections()
    command = args.regenerate or "python -m expertrag.eval.router_table " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:]))
    paths = write_table(table, args.out, args.name, command)
    print(f"Wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
