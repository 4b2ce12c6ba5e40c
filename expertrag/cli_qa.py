"""``expertrag eval qa``: passage recall, answer EM/F1 and latency on a multi-hop QA folder."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from expertrag.cli_common import fail, print_json
from expertrag.errors import ExpertRAGError
from expertrag.logging_config import configure_logging


def eval_qa(
    dataset_dir: Path = typer.Argument(..., help="Multi-hop QA folder: corpus.jsonl and questions.jsonl (questions_train.jsonl for --split train)."),
    retriever: list[str] = typer.Option(["dense", "graph"], "--retriever", help="dense, bm25, hybrid, graph or graph+hybrid; repeat for several."),
    mode: list[str] = typer.Option([], "--mode", help="Also answer with the LLM in this mode (local, global or pike); repeat for several. Without it only retrieval is scored."),
    kb: Optional[Path] = typer.Option(None, "--kb", help="Knowledge base to search (default: <cache dir>/kbs/<dataset>, ingested from the folder's corpus when missing)."),
    collection: Optional[str] = typer.Option(None, "--collection", "-c", help="Collection in --kb (default: its only collection, else the dataset folder name)."),
    split: str = typer.Option("test", help="test (questions.jsonl) or train (questions_train.jsonl)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N questions."),
    answer_limit: Optional[int] = typer.Option(None, "--answer-limit", min=1, help="Answer only the first N questions (LLM calls are slow on CPU)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write PREFIX.json (per question) and PREFIX.md (table)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of text."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress at INFO level to stderr."),
) -> None:
    """Print passage recall@2/@5 against the supporting passages, and answer EM/F1 with --mode."""
    from expertrag.eval.qa import QaDataset, evaluate_kb_qa, markdown_table, write_results
    from expertrag.knowledge_base import KnowledgeBase
    from expertrag.settings import Settings

    configure_logging(verbose)
    results = []
    try:
        settings = Settings()
        dataset = QaDataset.load(dataset_dir, split, limit)
        kb_path = kb or settings.cache_dir / "kbs" / dataset.name
        with KnowledgeBase.open(kb_path, settings, create=kb is None) as knowledge_base:
            names = knowledge_base.collections()
            name = collection or (names[0] if len(names) == 1 else dataset.name)
            if kb is None:
                # Ingestion skips documents already stored, so this also resumes an interrupted run.
                typer.echo(f"Ingesting {dataset_dir / 'corpus.jsonl'} into {kb_path} (collection {name!r})", err=True)
                knowledge_base.ingest(dataset_dir / "corpus.jsonl", name)
            for retriever_name in retriever:
                results.append(evaluate_kb_qa(knowledge_base, name, dataset, retriever_name, None))
            answered = QaDataset(dataset.name, dataset.folder, dataset.split, dataset.questions[:answer_limit])
            for mode_name in mode:
                for retriever_name in retriever:
                    results.append(evaluate_kb_qa(knowledge_base, name, answered, retriever_name, mode_name))
    except ExpertRAGError as error:
        fail(error)

    if out is not None:
        command = "expertrag eval qa " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["eval", "qa"] else sys.argv[1:])
        write_results(results, out, command)
    if as_json:
        print_json([{k: v for k, v in result.to_dict().items() if k != "records"} for result in results])
        return
    typer.echo(markdown_table(results), nl=False)
