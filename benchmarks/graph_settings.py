"""Passage recall of graph retrieval under a grid of settings, on the train questions of a QA set.

The graph settings' defaults were chosen with this script on the train questions of
HotpotQA and MuSiQue (never the test questions). Questions are encoded once and every grid
point reuses those vectors, so a point costs only the graph work.

Example (the embedding-linking and synonym-edge measurement in benchmarks/README.md):

    python benchmarks/graph_settings.py --kb kbs/musique --data ../shared/data/musique \
        --grid '{"entity_link_by_embedding": [false, true], "graph_synonym_edges": [false, true]}' \
        --out benchmarks/results/graph_settings_musique_train.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from expertrag.eval.qa import QaDataset, evaluate_qa
from expertrag.knowledge_base import KnowledgeBase
from expertrag.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, required=True, help="Knowledge base with the set's corpus ingested.")
    parser.add_argument("--data", type=Path, required=True, help="Multi-hop QA folder.")
    parser.add_argument("--collection", default="default")
    parser.add_argument("--split", default="train", help="Keep this at train: test questions must not pick settings.")
    parser.add_argument("--retriever", default="graph")
    parser.add_argument("--grid", required=True, help='JSON object: setting name -> list of values.')
    parser.add_argument("--out", type=Path, default=None, help="Write the rows as JSON here.")
    args = parser.parse_args()

    grid: dict[str, list] = json.loads(args.grid)
    dataset = QaDataset.load(args.data, args.split)
    kb = KnowledgeBase.open(args.kb, Settings())
    texts = [question.question for question in dataset.questions]
    vectors = dict(zip(texts, kb.encoder.encode(texts)))

    rows = []
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values))
        settings = Settings(**overrides)
        # A fresh searcher per grid point, so the graph is rebuilt under the new settings.
        kb.settings = settings
        kb._searchers.clear()
        searcher = kb.searcher(args.collection)

        def retrieve(question: str, searcher=searcher) -> tuple[list[str], list[str]]:
            retrieval = searcher.retrieve(question, 20, args.retriever, vectors[question], with_paths=False)
            return [hit.doc_id for hit in retrieval.hits], retrieval.notes

        started = time.perf_counter()
        result = evaluate_qa(dataset, args.retriever, retrieve)
        row = {"settings": overrides, **{k: result.metrics[k] for k in ("recall@2", "recall@5")},
               "seconds": time.perf_counter() - started}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out is not None:
        payload = {"kb": str(args.kb), "data": str(args.data), "split": args.split, "retriever": args.retriever,
                   "rows": rows}
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
