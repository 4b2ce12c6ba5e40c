"""Compare the speed of the current rule extractor with the first one, with less noise than one timed pass.

Speeds in the extraction table come from one pass per extractor, and on shared cores the
load changes between passes by tens of percent. This script parses each data set's texts
once (the spaCy work both extractors share), then times each extractor's rules on the
same parsed documents in alternating rounds and keeps the fastest round of each. The
end-to-end ratio adds the shared parse time to both.

Usage::

    python benchmarks/extraction_speed.py --limit 300 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from expertrag.atomic import atomic_write_bytes
from expertrag.eval.extraction_baseline import BaselineSpacyExtractor
from expertrag.eval.extraction_data import load_extraction_records
from expertrag.kg_build.extraction import SpacyExtractor, load_spacy
from expertrag.records import Chunk
from expertrag.settings import Settings

DATASETS = ("conll04", "scierc", "biored", "redocred", "webnlg2020_text2rdf")
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=300, help="Records per data set.")
    parser.add_argument("--rounds", type=int, default=5, help="Alternating timing rounds per extractor.")
    parser.add_argument("--out", type=Path, default=RESULTS / "extraction_speed.json")
    args = parser.parse_args(argv)

    settings = Settings()
    nlp = load_spacy(settings.spacy_model)
    extractors = {"spacy-rules-v1": BaselineSpacyExtractor(nlp), "spacy-rules": SpacyExtractor(nlp)}
    rows = []
    for dataset in DATASETS:
        records = load_extraction_records(settings.data_dir / dataset, "test", args.limit)
        chunks = [Chunk(r.record_id, r.record_id, dataset, 0, 0, len(r.text), r.text, 0) for r in records]
        started = time.perf_counter()
        docs = list(nlp.pipe([r.text for r in records], batch_size=settings.spacy_batch_size))
        parse_seconds = time.perf_counter() - started

        best = {name: float("inf") for name in extractors}
        for _ in range(args.rounds):
            for name, extractor in extractors.items():
                started = time.perf_counter()
                for doc, chunk in zip(docs, chunks):
                    extractor._extract(doc, 0, [chunk])
                best[name] = min(best[name], time.perf_counter() - started)
        before = parse_seconds + best["spacy-rules-v1"]
        after = parse_seconds + best["spacy-rules"]
        row = {
            "dataset": dataset,
            "records": len(records),
            "parse_seconds": round(parse_seconds, 3),
            "rules_seconds_before": round(best["spacy-rules-v1"], 4),
            "rules_seconds_after": round(best["spacy-rules"], 4),
            "documents_per_second_before": round(len(records) / before, 2),
            "documents_per_second_after": round(len(records) / after, 2),
            "speed_ratio_after_to_before": round(before / after, 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    command = "python benchmarks/extraction_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    atomic_write_bytes(args.out, json.dumps({"command": command, "rows": rows}, indent=1).encode("utf-8"))
    lines = [
        "# Rule extractor speed, after vs before",
        "",
        "Each data set's texts are parsed once (shared by both extractors); each extractor's rules",
        f"then run on the same parsed documents in {args.rounds} alternating rounds and the fastest",
        "round counts. The ratio is end-to-end documents/s after / before (parse time included).",
        f"2 shared CPU cores. Command: `{command}`",
        "",
        "| data set | records | parse s | rules s before | rules s after | docs/s before | docs/s after | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['dataset']} | {r['records']} | {r['parse_seconds']} | {r['rules_seconds_before']} | "
              f"{r['rules_seconds_after']} | {r['documents_per_second_before']} | {r['documents_per_second_after']} | "
              f"{r['speed_ratio_after_to_before']} |" for r in rows]
    atomic_write_bytes(args.out.with_suffix(".md"), ("\n".join(lines) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
