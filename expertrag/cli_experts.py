"""The ``expertrag experts`` commands: train, list, show and remove experts, and show routing decisions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from expertrag.cli_common import fail as _fail
from expertrag.cli_common import print_json as _print_json
from expertrag.errors import ExpertRAGError
from expertrag.logging_config import configure_logging

experts_app = typer.Typer(no_args_is_help=True, help="Train, list, show and remove query-side domain experts.")

KB_OPTION = typer.Option(Path("kb"), "--kb", help="Knowledge base folder; experts live in <kb>/experts.", envvar="EXPERTRAG_KB")
DIR_OPTION = typer.Option(None, "--experts-dir", help="Experts folder to use instead of <kb>/experts.")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of text.")
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Log progress at INFO level to stderr.")




def _experts_root(kb: Path, experts_dir: Optional[Path]) -> Path:
    from expertrag.retrievers.experts.registry import EXPERTS_FOLDER

    return experts_dir if experts_dir is not None else kb / EXPERTS_FOLDER


def _recipes(names: Optional[list[str]], learning_rate: Optional[float], teacher: bool, datasets: Any) -> tuple[Any, ...]:
    """Return the recipes named in ``names``, or those that suit ``datasets`` (see ``default_recipes``),
    each with ``learning_rate`` when given."""
    from dataclasses import replace

    from expertrag.retrievers.experts.data import TrainingData
    from expertrag.retrievers.experts.training import RECIPES, default_recipes

    unknown = [name for name in names or [] if name not in RECIPES]
    if unknown:
        raise typer.BadParameter(f"unknown --recipe {', '.join(unknown)}: use {', '.join(RECIPES)}")
    if learning_rate is not None and learning_rate <= 0:
        raise typer.BadParameter(f"--learning-rate must be positive, got {learning_rate}")
    if names:
        chosen = [RECIPES[name] for name in dict.fromkeys(names)]
    else:
        chosen = list(default_recipes([datasets] if isinstance(datasets, TrainingData) else list(datasets)))
    if not teacher and any(recipe.teacher_weight > 0 for recipe in chosen):
        raise typer.BadParameter("--no-teacher leaves no teacher targets: choose --recipe in-batch or in-batch+hard")
    return tuple(replace(recipe, learning_rate=learning_rate) if learning_rate else recipe for recipe in chosen)


@experts_app.command("train")
def train(
    name: Optional[str] = typer.Argument(None, help="Expert name (default: the collection or data folder name)."),
    kb: Path = KB_OPTION,
    experts_dir: Optional[Path] = DIR_OPTION,
    collection: Optional[str] = typer.Option(None, "--collection", "-c", help="Train on this knowledge-base collection's chunks."),
    data: Optional[Path] = typer.Option(None, "--data", help="BEIR folder: its corpus, or with --collection only its qrels."),
    split: str = typer.Option("train", help="Qrels split that contains the training queries."),
    pseudo: Optional[str] = typer.Option(None, "--pseudo", help="Make pseudo-queries instead of reading qrels: sentence, title, first-sentence, auto, ict or llm (questions from the local LLM, about 1.5 s each on CPU, cached). Default for a collection without --data: sentence."),
    teacher: bool = typer.Option(True, "--teacher/--no-teacher", help="Label the queries with the BM25 + base-encoder hybrid teacher and distill it."),
    max_queries: int = typer.Option(1000, min=2, help="Pseudo-queries to make (one per sampled document)."),
    multitask: bool = typer.Option(False, "--multitask", help="Train one adapter on the stored queries of every domain expert."),
    epochs: int = typer.Option(4, min=1, help="Epochs per recipe; the best epoch on validation is kept."),
    rank: int = typer.Option(8, min=1, help="LoRA rank."),
    recipe: Optional[list[str]] = typer.Option(None, "--recipe", help="Train only this recipe (distill+labels, distill, in-batch, in-batch+hard); repeat for several."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Learning rate of every recipe (default: each recipe's own)."),
    batch_size: int = typer.Option(32, min=1, help="Queries per training step."),
    seed: int = typer.Option(0, help="Seed of the validation split, sampling and LoRA initialization."),
    min_gain: float = typer.Option(0.005, min=0.0, help="nDCG@10 the expert must gain over the base encoder on validation."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an expert of the same name."),
    as_json: bool = JSON_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Train a query-side LoRA expert and register it if it beats the base encoder on validation."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from expertrag.retrievers.encoder import Encoder
    from expertrag.retrievers.experts import (
        ExpertRegistry,
        ExpertRejectedError,
        LoraSpec,
        TrainingConfig,
        load_beir_documents,
        load_beir_training_data,
        pseudo_query_training_data,
        train_expert,
    )
    from expertrag.retrievers.experts.registry import check_expert_name
    from expertrag.settings import Settings

    configure_logging(verbose)
    try:
        settings = Settings()
        encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
        registry = ExpertRegistry(_experts_root(kb, experts_dir))
        # Check the name before the training data exists: LLM pseudo-queries can take many minutes.
        if name is None and multitask:
            name = "multitask"
        elif name is None:
            name = collection or (data.name if data is not None else None)
        if name is not None:
            check_expert_name(name)
            if name in registry.names() and not overwrite:
                raise typer.BadParameter(f"expert {name!r} already exists in {registry.root}: "
                                         "pass --overwrite or remove it")
        if multitask:
            domains = [d for info in registry.list() if info.kind == "domain" for d in registry.load_domains(info.name)]
            if not domains:
                raise typer.BadParameter("--multitask needs at least one registered domain expert")
            datasets: Any = domains
        elif collection is not None:
            from expertrag.knowledge_base import KnowledgeBase
            from expertrag.retrievers.experts.data import collection_training_data

            with KnowledgeBase.open(kb, settings) as knowledge_base:
                pseudo = pseudo or (None if data is not None else "sentence")
                datasets = collection_training_data(knowledge_base.store, collection, None if pseudo else data, split,
                                                    pseudo or "sentence", max_queries, seed,  # type: ignore[arg-type]
                                                    encoder if teacher else None)
        elif data is not None:
            if pseudo:
                datasets = pseudo_query_training_data(name, load_beir_documents(data), encoder, pseudo,  # type: ignore[arg-type]
                                                      max_queries, seed, settings.cache_dir, {"path": str(data)},
                                                      teacher=teacher)
            else:
                datasets = load_beir_training_data(data, split, encoder, settings.cache_dir, name, teacher=teacher)
        else:
            raise typer.BadParameter("give --collection, --data or --multitask")

        assert name is not None  # every branch that reaches here gave the expert a name
        config = TrainingConfig(lora=LoraSpec(rank=rank, alpha=2.0 * rank), recipes=_recipes(recipe, learning_rate, teacher, datasets),
                                epochs=epochs, batch_size=batch_size, seed=seed, min_validation_gain=min_gain,
                                device=settings.device)
        with Progress(TextColumn(f"[bold]train {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=as_json or not sys.stderr.isatty(), transient=True) as bar:
            task = bar.add_task("steps", total=None)
            try:
                expert = train_expert(name, datasets, encoder, config, "multitask" if multitask else None,
                                      progress=lambda done, total: bar.update(task, completed=done, total=total))
            except ExpertRejectedError as error:
                registry.record_rejection(name, {"message": str(error), **error.report})
                raise
        info = registry.add(expert, overwrite=overwrite)
    except (ExpertRAGError, typer.BadParameter) as error:
        _fail(error)
    summary = info.summary() | {"path": str(info.path), "chosen_recipe": expert.metrics["chosen_recipe"],
                                "chosen_epochs": expert.metrics["chosen_epochs"]}
    if as_json:
        _print_json(summary)
        return
    typer.echo(f"Registered expert {name!r} in {info.path}: validation nDCG@10 {summary['validation_expert']:.4f} "
               f"vs base {summary['validation_base']:.4f} (recipe {summary['chosen_recipe']}, "
               f"{summary['chosen_epochs']} epochs, {summary['training_seconds']} s)")


@experts_app.command("list")
def list_experts(kb: Path = KB_OPTION, experts_dir: Optional[Path] = DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """List the experts with their validation scores; unreadable or corrupt experts are listed with the error."""
    from expertrag.retrievers.experts import ExpertError, ExpertRegistry

    registry = ExpertRegistry(_experts_root(kb, experts_dir))
    rows = []
    for info in registry.list(include_unreadable=True):
        row = info.summary()
        if info.usable:
            # Reading the adapter checks it against its recorded sha256, as routing does.
            try:
                registry.load_weights(info.name)
            except ExpertError as error:
                row["error"] = str(error)
        rows.append(row)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        typer.echo(f"No experts in {_experts_root(kb, experts_dir)}")
        return
    typer.echo(f"{'name':<20}{'kind':<11}{'base':>8}{'expert':>8}{'seconds':>9}  domains")
    for row in rows:
        if row["error"]:
            typer.echo(f"{row['name']:<20}unreadable: {row['error']}")
            continue
        typer.echo(f"{row['name']:<20}{row['kind']:<11}{row['validation_base'] or 0:>8.4f}"
                   f"{row['validation_expert'] or 0:>8.4f}{row['training_seconds'] or 0:>9.1f}  {', '.join(row['domains'])}")


@experts_app.command("show")
def show(
    name: str = typer.Argument(..., help="Expert name."),
    kb: Path = KB_OPTION,
    experts_dir: Optional[Path] = DIR_OPTION,
) -> None:
    """Print an expert's expert.json: training config, data hashes and the metrics it reached."""
    from expertrag.retrievers.experts import ExpertRegistry

    try:
        info = ExpertRegistry(_experts_root(kb, experts_dir)).get(name)
    except ExpertRAGError as error:
        _fail(error)
    _print_json({"path": str(info.path), **info.metadata})


@experts_app.command("remove")
def remove(
    name: str = typer.Argument(..., help="Expert name."),
    kb: Path = KB_OPTION,
    experts_dir: Optional[Path] = DIR_OPTION,
) -> None:
    """Delete an expert's folder; other experts stay as they are, and pilots are rebuilt on next use."""
    from expertrag.retrievers.experts import ExpertRegistry

    try:
        ExpertRegistry(_experts_root(kb, experts_dir)).remove(name)
    except ExpertRAGError as error:
        _fail(error)
    typer.echo(f"Removed expert {name!r}")


@experts_app.command("route")
def route(
    queries: list[str] = typer.Argument(..., help="One or more queries."),
    kb: Path = KB_OPTION,
    experts_dir: Optional[Path] = DIR_OPTION,
    strategy: str = typer.Option("pilot", help="pilot, centroid, multitask or fixed:NAME."),
    representation: str = typer.Option("static", help="Routing representation: static (word-piece mean) or base (encoder)."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Print the expert each query is routed to, with the similarity to every candidate, as JSON."""
    from expertrag.retrievers.encoder import Encoder
    from expertrag.retrievers.experts import ExpertRegistry, RouterRetriever
    from expertrag.settings import Settings

    configure_logging(verbose)
    try:
        settings = Settings()
        encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
        router = RouterRetriever(ExpertRegistry(_experts_root(kb, experts_dir)), encoder, strategy, representation)
        decisions = router.route(queries)
    except ExpertRAGError as error:
        _fail(error)
    _print_json([{"query": query, **decision.to_dict()} for query, decision in zip(queries, decisions)])


if __name__ == "__main__":
    experts_app()
