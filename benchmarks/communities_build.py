"""Time ``communities build`` on the bundled SciFact sample: Leiden detection and LLM summaries.

Ingests the sample into a temporary knowledge base, builds communities with at most
``--max-summaries`` summaries from the default local model, and times one plain answer
call of the same model in the same run as the baseline, so the per-summary cost is also
given as a ratio that does not depend on how busy the machine was.

    python benchmarks/communities_build.py --max-summaries 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from expertrag.kg_build.community_store import CommunityStore
from expertrag.knowledge_base import KnowledgeBase
from expertrag.rag.communities import build_communities
from expertrag.sample import SAMPLE_DIR, SAMPLE_QUESTION
from expertrag.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-summaries", type=int, default=3, help="LLM summaries to write (each is one LLM call).")
    args = parser.parse_args()

    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="expertrag_communities_") as folder:
        kb = KnowledgeBase.open(Path(folder) / "kb", settings, create=True)
        kb.ingest(SAMPLE_DIR, collection="scifact-sample")
        backend = kb.answerer().backend

        started = time.perf_counter()
        baseline_answer = kb.answer(SAMPLE_QUESTION)
        answer_seconds = time.perf_counter() - started

        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        report = build_communities(kb.store, settings, backend, kb.encoder.encode, max_summaries=args.max_summaries)
        build_seconds = time.perf_counter() - started

        started = time.perf_counter()
        rebuild = build_communities(kb.store, settings, backend, kb.encoder.encode, max_summaries=0)
        rebuild_seconds = time.perf_counter() - started
        titles = [c.title for c in CommunityStore(kb.store).list(summarized_only=True)]
        kb.close()

    per_summary = report.summary_seconds / max(report.summaries_written + len(report.summaries_failed), 1)
    result = {
        "command": f"python benchmarks/communities_build.py --max-summaries {args.max_summaries}",
        "model": backend.name,
        "entities": report.entities,
        "edges": report.edges,
        "communities": report.communities,
        "per_level": {str(level): count for level, count in sorted(report.per_level.items())},
        "detect_seconds": round(report.detect_seconds, 2),
        "summaries_written": report.summaries_written,
        "summaries_failed": len(report.summaries_failed),
        "summary_seconds": round(report.summary_seconds, 1),
        "seconds_per_summary": round(per_summary, 1),
        "baseline_answer_seconds": round(answer_seconds, 1),
        "baseline_answer_found": baseline_answer.found,
        "summary_to_answer_ratio": round(per_summary / answer_seconds, 2) if answer_seconds else None,
        "build_seconds": round(build_seconds, 1),
        "rebuild_seconds_no_llm": round(rebuild_seconds, 2),
        "rebuild_summaries_kept": rebuild.summaries_kept,
        "load_average_at_start": round(load_before, 2),
        "estimated_seconds_all_summaries": round(report.detect_seconds + per_summary * report.communities),
        "titles": titles,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "communities_build.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    levels = ", ".join(f"level {level}: {count}" for level, count in result["per_level"].items())
    markdown = [
        "# Communities build on the SciFact sample (100 abstracts)",
        "",
        f"Command: `{result['command']}`; model {result['model']}; 2 shared CPU cores, "
        f"load average {result['load_average_at_start']} at the start.",
        "",
        "| step | value |",
        "|---|---|",
        f"| entity graph | {result['entities']} entities, {result['edges']} edges |",
        f"| communities | {result['communities']} ({levels}) |",
        f"| Leiden detection and storage | {result['detect_seconds']} s |",
        f"| summaries written | {result['summaries_written']} ({result['summaries_failed']} failed) in {result['summary_seconds']} s |",
        f"| seconds per summary | {result['seconds_per_summary']} |",
        f"| one local answer (baseline, same run) | {result['baseline_answer_seconds']} s |",
        f"| summary / answer time | {result['summary_to_answer_ratio']} |",
        f"| rebuild without LLM | {result['rebuild_seconds_no_llm']} s, {result['rebuild_summaries_kept']} summaries kept |",
        f"| all {result['communities']} summaries (estimate: detection + communities x seconds per summary) "
        f"| {result['estimated_seconds_all_summaries']} s |",
        "",
    ]
    (RESULTS / "communities_build.md").write_text("\n".join(markdown), encoding="utf-8")
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
