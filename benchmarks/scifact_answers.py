"""Answer SciFact claims from an ingested knowledge base and check that every citation resolves.

Usage:
    python benchmarks/scifact_answers.py --kb KB [--claims 5]

A citation resolves when its chunk is stored, its quote equals the document text between
its offsets, and those offsets lie inside the chunk. Writes
benchmarks/results/scifact_answers.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from expertrag.eval.beir import BeirDataset
from expertrag.knowledge_base import KnowledgeBase
from expertrag.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def citation_resolves(kb: KnowledgeBase, citation) -> bool:
    chunk = kb.chunk(citation.chunk_id)
    document = kb.store.document_text(citation.collection, citation.doc_id)
    return (
        chunk is not None
        and document is not None
        and document[citation.start:citation.end] == citation.quote
        and chunk["start"] <= citation.start < citation.end <= chunk["end"]
    )


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, required=True)
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--dataset", type=Path, default=settings.data_dir / "scifact")
    parser.add_argument("--claims", type=int, default=5)
    args = parser.parse_args()

    dataset = BeirDataset.load(args.dataset)
    rows = []
    with KnowledgeBase.open(args.kb, settings) as kb:
        for query_id in list(dataset.qrels)[: args.claims]:
            claim = dataset.queries[query_id]
            question = f"What does the evidence say about this claim: {claim}"
            answer = kb.answer(question, args.collection)
            rows.append({
                "query_id": query_id,
                "claim": claim,
                "answer": answer.answer,
                "found": answer.found,
                "citations": [c.__dict__ for c in answer.citations],
                "citations_resolved": sum(citation_resolves(kb, c) for c in answer.citations),
                "cites_a_relevant_abstract": any(c.doc_id in dataset.qrels[query_id] for c in answer.citations),
                "seconds": round(answer.seconds, 1),
                "notes": answer.notes,
            })
            print(json.dumps(rows[-1], ensure_ascii=False)[:400], flush=True)

    total = sum(len(r["citations"]) for r in rows)
    resolved = sum(r["citations_resolved"] for r in rows)
    summary = {"claims": len(rows), "answered": sum(r["found"] for r in rows), "citations": total,
               "citations_resolved": resolved,
               "answers_citing_a_relevant_abstract": sum(r["cites_a_relevant_abstract"] for r in rows),
               "llm": settings.llm_backend, "command": "python benchmarks/scifact_answers.py --kb KB"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scifact_answers.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    lines = [f"# Cited answers on {len(rows)} SciFact claims ({settings.llm_backend}, default GGUF model)", "",
             "Regenerate: `python benchmarks/scifact_answers.py --kb KB`.", "",
             f"{summary['answered']} of {len(rows)} claims answered; {resolved} of {total} citations resolve to stored chunk text; "
             f"{summary['answers_citing_a_relevant_abstract']} answers cite an abstract the qrels mark relevant.", "",
             "| claim | answer | citations (doc: chars) | resolved | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        cited = ", ".join(f"{c['doc_id']}: {c['start']}-{c['end']}" for c in r["citations"]) or "none"
        lines.append(f"| {r['claim']} | {r['answer']} | {cited} | {r['citations_resolved']}/{len(r['citations'])} | {r['seconds']} |")
    (RESULTS / "scifact_answers.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
