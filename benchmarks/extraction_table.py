"""Build the extraction table: data set x extractor with entity F1, relation F1 and documents/s.

Each call scores one or more extractors on the five extraction sets and merges the rows
into ``benchmarks/results/extraction_table.json``, then rewrites the Markdown table from
the whole JSON. Rule extractors given in one call run one after the other on each data
set, so their speed ratio comes from the same run.

Usage::

    python benchmarks/extraction_table.py --extractor spacy-rules-v1 --extractor spacy-rules
    python benchmarks/extraction_table.py --extractor llm --column llm-0.5b --limit 30
    EXPERTRAG_LLM_MODEL_PATH=qwen1.5b.gguf python benchmarks/extraction_table.py \\
        --extractor llm --column llm-1.5b --limit 30
    python benchmarks/extraction_table.py --include results/extraction_llm_05b.json   # merge only
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from expertrag.atomic import atomic_write_bytes
from expertrag.eval.extraction import create_extractor, evaluate_extraction
from expertrag.eval.extraction_schema import DatasetSchema
from expertrag.settings import Settings

DATASETS = ("conll04", "scierc", "biored", "redocred", "webnlg2020_text2rdf")
RESULTS = Path(__file__).resolve().parent / "results"
COLUMN_TITLES = {
    "spacy-rules-v1": "spaCy rules before",
    "spacy-rules": "spaCy rules after",
    "spacy-rules-v1-first15": "spaCy rules before, first 15 records",
    "spacy-rules-first15": "spaCy rules after, first 15 records",
    "llm-0.5b": "LLM Qwen2.5-Coder 0.5B",
    "llm-1.5b": "LLM Qwen2.5-Coder 1.5B",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extractor", action="append", default=[], help="spacy-rules, spacy-rules-v1 or llm; repeatable.")
    parser.add_argument("--column", action="append", help="Column name of each --extractor (default: the extractor name).")
    parser.add_argument("--limit", type=int, default=None, help="Records per data set (default: the whole split).")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=RESULTS / "extraction_table.json")
    parser.add_argument("--include", type=Path, nargs="*", default=[],
                        help="Result JSON files of earlier runs whose rows are copied into the table first.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    columns = args.column or args.extractor
    if len(columns) != len(args.extractor):
        parser.error("give one --column per --extractor")
    settings = Settings()
    table = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    for path in args.include:
        for row in json.loads(path.read_text())["rows"]:
            key = (row["dataset"], row["column"])
            table["rows"] = [r for r in table["rows"] if (r["dataset"], r["column"]) != key] + [row]
    if args.include:
        _write(table, args.out)
    command = "python benchmarks/extraction_table.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    for dataset in args.datasets:
        schema = DatasetSchema.for_dataset(dataset)
        for extractor_name, column in zip(args.extractor, columns):
            extractor = create_extractor(extractor_name, settings, schema)
            result = evaluate_extraction(settings.data_dir / dataset, extractor, split=args.split, limit=args.limit,
                                         schema=schema)
            row = {"column": column, "command": command, **result.to_dict()}
            table["rows"] = [r for r in table["rows"] if (r["dataset"], r["column"]) != (dataset, column)] + [row]
            _write(table, args.out)
            print(f"{dataset:<22}{column:<16}entity F1 {row['entities']['strict']['f1']:.3f}/"
                  f"{row['entities']['relaxed']['f1']:.3f}  relation F1 {row['relations']['strict']['f1']:.3f}/"
                  f"{row['relations']['relaxed']['f1']:.3f}  {row['documents_per_second']:.2f} docs/s", flush=True)


def _write(table: dict, out: Path) -> None:
    atomic_write_bytes(out, json.dumps(table, indent=1).encode("utf-8"))
    atomic_write_bytes(out.with_suffix(".md"), render_markdown(table).encode("utf-8"))


def render_markdown(table: dict) -> str:
    """Render the rows as one Markdown table per data set, with the speed ratio of the two rule columns."""
    rows = table["rows"]
    lines = [
        "# Extraction against gold triples",
        "",
        "Entity and relation F1 are given as strict / relaxed. Strict needs the exact span (the exact",
        "surface string on WebNLG) and a mapped type; relaxed compares normalized text, ignores",
        "entity types and still needs a mapped relation label. `records` is the number of test",
        "records scored (LLM columns score the first N of each split). Speed is extraction time",
        "only, on 2 shared CPU cores. Regenerate with the command of each row (see `command` in",
        "extraction_table.json).",
        "",
        "| data set | extractor | records | entity F1 | relation F1 | relation pairs F1 | docs/s |",
        "|---|---|---|---|---|---|---|",
    ]
    order = list(COLUMN_TITLES)
    for dataset in DATASETS:
        found = sorted((r for r in rows if r["dataset"] == dataset),
                       key=lambda r: order.index(r["column"]) if r["column"] in order else len(order))
        for row in found:
            entities, relations = row["entities"], row["relations"]
            lines.append(
                f"| {dataset} | {COLUMN_TITLES.get(row['column'], row['column'])} | {row['records']} | "
                f"{entities['strict']['f1']:.3f} / {entities['relaxed']['f1']:.3f} | "
                f"{relations['strict']['f1']:.3f} / {relations['relaxed']['f1']:.3f} | "
                f"{relations['pairs_relaxed']['f1']:.3f} | {row['documents_per_second']:.2f} |"
            )
    before = {r["dataset"]: r for r in rows if r["column"] == "spacy-rules-v1"}
    after = {r["dataset"]: r for r in rows if r["column"] == "spacy-rules"}
    shared = [d for d in DATASETS if d in before and d in after]
    if shared:
        lines += ["", "## Rules after vs before", "",
                  "The speed ratio here comes from one pass of each extractor and swings with the load of the",
                  "shared cores; extraction_speed.md times both rule sets on the same parsed documents in",
                  "alternating rounds, which is the figure to trust.", "",
                  "| data set | relation F1 relaxed before | after | speed after / before, one pass |", "|---|---|---|---|"]
        for dataset in shared:
            old, new = before[dataset], after[dataset]
            ratio = new["documents_per_second"] / old["documents_per_second"] if old["documents_per_second"] else 0.0
            lines.append(f"| {dataset} | {old['relations']['relaxed']['f1']:.3f} | "
                         f"{new['relations']['relaxed']['f1']:.3f} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
