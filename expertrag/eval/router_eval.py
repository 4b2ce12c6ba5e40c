"""``expertrag eval beir --router STRATEGY``: the router table over BEIR folders, reduced to one strategy.

The scores come from :func:`expertrag.eval.router_table.build_folder_table`, so every column
of the full table is computed and written with ``--out``. The printed summary shows BM25,
the base encoder, the requested strategy and the oracle per dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expertrag.errors import InputError
from expertrag.eval.router_table import build_folder_table, write_table
from expertrag.retrievers.encoder import Encoder
from expertrag.retrievers.experts.adapter import BASE_EXPERT
from expertrag.retrievers.experts.registry import ExpertRegistry
from expertrag.retrievers.experts.router import parse_strategy
from expertrag.settings import Settings


def strategy_column(table: dict[str, Any], strategy: str) -> str:
    """Return the table column that scores ``strategy``.

    Raises:
        InputError: ``multitask`` without a multitask expert, or ``fixed:NAME`` with an unknown expert.
    """
    kind, name = parse_strategy(strategy)
    if kind in ("pilot", "centroid", "fusion", "oracle"):
        return kind
    if kind == "multitask":
        multitask = next((expert for expert, info in table["experts"].items() if info["kind"] == "multitask"), None)
        if multitask is None or multitask not in table["columns"]:
            raise InputError("Routing strategy multitask needs a multitask expert: train one with "
                             "`expertrag experts train --multitask`")
        return multitask
    if name not in table["columns"] or name in ("bm25", "pilot", "centroid", "fusion", "oracle"):
        known = [column for column in table["columns"] if column == BASE_EXPERT or column in table["experts"]]
        raise InputError(f"Unknown expert {name!r} in routing strategy {strategy!r}: use fixed: with one of {', '.join(known)}")
    return str(name)


def evaluate_router(dataset_dirs: list[Path], split: str, experts_root: Path, strategy: str,
                    settings: Settings) -> tuple[dict[str, Any], str]:
    """Score every dataset with the experts in ``experts_root``; return the table and the strategy's column.

    Raises:
        InputError: the strategy is unknown, or ``experts_root`` contains no experts.
    """
    parse_strategy(strategy)
    registry = ExpertRegistry(experts_root)
    if not registry.list():
        raise InputError(f"No usable experts in {experts_root}: train one with "
                         "`expertrag experts train --kb KB --collection NAME` or pass --experts-dir")
    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    table = build_folder_table([(folder, split) for folder in dataset_dirs], registry, settings, encoder)
    table["rejected"] = registry.rejections()
    return table, strategy_column(table, strategy)


def summary(table: dict[str, Any], column: str) -> list[dict[str, Any]]:
    """Return one JSON-ready row per dataset and a mean row with BM25, base, the strategy's column and the oracle."""
    rows = []
    for row in [*table["rows"], {"dataset": "mean", "queries": sum(r["queries"] for r in table["rows"]),
                                 "ndcg@10": table["mean"], "routing": {}}]:
        scores = row["ndcg@10"]
        rows.append({"dataset": row["dataset"], "queries": row["queries"], "bm25": scores["bm25"],
                     BASE_EXPERT: scores[BASE_EXPERT], column: scores[column], "oracle": scores["oracle"],
                     "routing": row["routing"].get(column, {})})
    return rows


def summary_text(table: dict[str, Any], column: str) -> list[str]:
    """Return the summary as aligned text lines for a terminal."""
    lines = [f"{'dataset':<16}{'queries':>8}{'bm25':>8}{'base':>8}{column[:12]:>13}{'oracle':>8}  routing"]
    for row in summary(table, column):
        routing = ", ".join(f"{expert} {count}" for expert, count in row["routing"].items())
        lines.append(f"{row['dataset']:<16}{row['queries']:>8}{row['bm25']:>8.4f}{row[BASE_EXPERT]:>8.4f}"
                     f"{row[column]:>13.4f}{row['oracle']:>8.4f}  {routing}")
    return lines


def write_outputs(table: dict[str, Any], out: Path, command: str) -> tuple[Path, Path]:
    """Write the full table as ``out`` (JSON) and the same name with ``.md`` (Markdown)."""
    return write_table(table, out.parent, out.stem, command)

