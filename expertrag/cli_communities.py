"""The ``expertrag communities`` commands: build entity communities with summaries, and list them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from expertrag.cli_common import fail as _fail
from expertrag.cli_common import print_json as _print_json
from expertrag.errors import EmptyKnowledgeBaseError, ExpertRAGError
from expertrag.logging_config import configure_logging

communities_app = typer.Typer(no_args_is_help=True, help="Build and list entity communities for global questions.")

KB_OPTION = typer.Option(Path("kb"), "--kb", help="Knowledge base folder.", envvar="EXPERTRAG_KB")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of text.")
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Log progress at INFO level to stderr.")


@communities_app.command("build")
def build(
    kb: Path = KB_OPTION,
    max_summaries: Optional[int] = typer.Option(
        None, "--max-summaries", min=0,
        help="LLM summaries to write in this run at most (0: membership only); a later run writes the rest.",
    ),
    as_json: bool = JSON_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Detect entity communities with Leiden and write the missing LLM summaries; summaries of unchanged communities are kept."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from expertrag.knowledge_base import KnowledgeBase
    from expertrag.rag.communities import build_communities
    from expertrag.rag.llm import create_backend

    configure_logging(verbose)
    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            if not knowledge_base.collections():
                raise EmptyKnowledgeBaseError(f"The knowledge base {kb} is empty: ingest a corpus first")
            backend = create_backend(knowledge_base.settings) if max_summaries != 0 else None
            with Progress(TextColumn("[bold]summaries"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          disable=as_json or not sys.stderr.isatty(), transient=True) as bar:
                task = bar.add_task("communities", total=None)
                report = build_communities(
                    knowledge_base.store, knowledge_base.settings, backend,
                    encode=knowledge_base.encoder.encode, max_summaries=max_summaries,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    except ExpertRAGError as error:
        _fail(error)
    if as_json:
        _print_json({**report.__dict__, "kb": str(kb)})
        return
    levels = ", ".join(f"level {level}: {count}" for level, count in sorted(report.per_level.items()))
    typer.echo(
        f"Found {report.communities} communities ({levels}) among {report.entities} entities and "
        f"{report.edges} edges in {report.detect_seconds:.1f} s."
    )
    typer.echo(
        f"Summaries: {report.summaries_written} written in {report.summary_seconds:.1f} s, {report.summaries_kept} kept, "
        f"{len(report.summaries_failed)} failed, {report.summaries_pending} still missing."
    )
    for community_id in report.summaries_failed[:10]:
        typer.echo(f"  failed: {community_id}")
    for note in report.notes:
        typer.echo(f"  note: {note}")


@communities_app.command("list")
def list_communities(
    kb: Path = KB_OPTION,
    level: Optional[int] = typer.Option(None, "--level", min=0, help="Show only this level (0 is the coarsest)."),
    limit: int = typer.Option(50, "--limit", min=1, help="Communities to show at most."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List the stored communities with their size, top entities and summary title."""
    from expertrag.kg_build.community_store import CommunityStore
    from expertrag.knowledge_base import KnowledgeBase

    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            community_store = CommunityStore(knowledge_base.store)
            communities = community_store.list(level=level, with_members=False)[:limit]
            counts = community_store.counts()
            names = {}
            for community in communities:
                for entity_id in community.top_entities[:5]:
                    entity = knowledge_base.store.get_entity(entity_id)
                    names[entity_id] = entity.name if entity is not None else entity_id
    except ExpertRAGError as error:
        _fail(error)

    rows = [
        {"community_id": c.community_id, "level": c.level, "parent_id": c.parent_id, "size": c.size,
         "title": c.title, "summary": c.summary, "top_entities": [names[e] for e in c.top_entities[:5]],
         "chunk_ids": c.chunk_ids}
        for c in communities
    ]
    if as_json:
        _print_json({"counts": counts, "communities": rows})
        return
    if not counts["communities"]:
        typer.echo(f"No communities in {kb}: run `expertrag communities build --kb {kb}`.")
        return
    typer.echo(f"{counts['communities']} communities, {counts['summarized']} with a summary, {counts['levels']} levels")
    for row in rows:
        title = row["title"] or "(no summary yet)"
        typer.echo(f"{row['community_id']}  level {row['level']}  {row['size']:>4} entities  {title}")
        typer.echo(f"    {', '.join(row['top_entities'])}")
