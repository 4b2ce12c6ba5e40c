"""Measure entity-resolution merges against Re-DocRED's gold entity clusters.

Every distinct mention string of a document is one item, typed with its gold entity's
type, and each document is resolved on its own (Re-DocRED has no entity ids across
documents). A pair of items counts as a true merge when the resolver puts both in one
cluster and the gold puts both in one entity. Precision and recall are over pairs,
summed over documents. Items whose string belongs to two gold entities of a document
are left out, because no resolver working from names can split them.

Usage::

    python benchmarks/extraction_resolution.py --limit 500 --thresholds 0.8 0.85 0.9 0.95
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from itertools import combinations
from pathlib import Path

from expertrag.atomic import atomic_write_bytes
from expertrag.eval.extraction_data import GoldRecord, load_extraction_records
from expertrag.kg_build.resolution import EntityResolver, NamedEntity
from expertrag.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
# Re-DocRED types as the resolver's label groups.
LABELS = {"PER": "PERSON", "ORG": "ORG", "LOC": "LOC", "TIME": "TIME", "NUM": "NUM", "MISC": "MISC"}


def document_items(record: GoldRecord) -> tuple[list[NamedEntity], dict[str, str]]:
    """Return the distinct mention strings of a record as entities to resolve, with each key's gold entity."""
    owners: dict[str, set[str]] = {}
    types: dict[str, str] = {}
    for entity in record.entities:
        for mention in entity.mentions:
            owners.setdefault(mention.text, set()).add(entity.key)
            types.setdefault(mention.text, entity.type)
    items, gold = [], {}
    for index, (text, entity_keys) in enumerate(owners.items()):
        if len(entity_keys) != 1:
            continue
        key = f"{record.record_id}:{index}"
        items.append(NamedEntity(key, text, LABELS.get(types[text], types[text])))
        gold[key] = next(iter(entity_keys))
    return items, gold


def score(records: list[GoldRecord], resolver: EntityResolver) -> dict[str, float | int]:
    """Return pairwise merge precision, recall and F1 of ``resolver`` over the records."""
    true_pairs = predicted_pairs = gold_pairs = 0
    merges: dict[str, int] = {}
    for record in records:
        items, gold = document_items(record)
        result = resolver.resolve(items, [record.text])
        for stage, count in result.merges_by_stage.items():
            merges[stage] = merges.get(stage, 0) + count
        for cluster in result.clusters:
            for first, second in combinations(cluster, 2):
                predicted_pairs += 1
                true_pairs += gold[first] == gold[second]
        by_gold: dict[str, int] = {}
        for key in gold:
            by_gold[gold[key]] = by_gold.get(gold[key], 0) + 1
        gold_pairs += sum(size * (size - 1) // 2 for size in by_gold.values())
    precision = true_pairs / predicted_pairs if predicted_pairs else 0.0
    recall = true_pairs / gold_pairs if gold_pairs else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_pairs": true_pairs,
            "predicted_pairs": predicted_pairs, "gold_pairs": gold_pairs, "merges_by_stage": merges}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="Documents of the split (default: all).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95])
    parser.add_argument("--out", type=Path, default=RESULTS / "extraction_resolution.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from expertrag.retrievers.encoder import Encoder

    settings = Settings()
    records = load_extraction_records(settings.data_dir / "redocred", args.split, args.limit)
    encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
    names = sorted({item.name for record in records for item in document_items(record)[0]})
    vectors = dict(zip(names, encoder.encode(names)))

    def encode(texts: list[str]):  # type: ignore[no-untyped-def]
        import numpy as np

        return np.stack([vectors[text] for text in texts])

    settings_rows = [("exact", ("exact",), None), ("exact + alias", ("exact", "alias"), None)]
    settings_rows += [(f"exact + alias + embedding >= {t}", EntityResolver.STAGES, t) for t in args.thresholds]
    rows = []
    for title, stages, threshold in settings_rows:
        started = time.perf_counter()
        resolver = EntityResolver(encode if threshold is not None else None, threshold or 1.0, stages)
        row = {"setting": title, "threshold": threshold, **score(records, resolver),
               "seconds": round(time.perf_counter() - started, 2)}
        rows.append(row)
        print(f"{title:<40} P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}", flush=True)

    command = "python benchmarks/extraction_resolution.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    payload = {"dataset": "redocred", "split": args.split, "documents": len(records), "encoder": settings.encoder,
               "command": command, "rows": rows}
    atomic_write_bytes(args.out, json.dumps(payload, indent=1).encode("utf-8"))
    lines = [
        "# Entity resolution against Re-DocRED gold clusters",
        "",
        f"{len(records)} {args.split} documents; items are the distinct mention strings of each document, typed",
        "with the gold type; pairwise merge precision and recall within documents. Name vectors:",
        f"{settings.encoder}. Command: `{command}`",
        "",
        "| setting | precision | recall | F1 | merged pairs | gold pairs |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['setting']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['predicted_pairs']} | "
              f"{r['gold_pairs']} |" for r in rows]
    atomic_write_bytes(args.out.with_suffix(".md"), ("\n".join(lines) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
