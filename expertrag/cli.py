"""The ``expertrag`` command: ingest, query, retrieve, serve, evaluate and export a knowledge base."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from expertrag.cli_common import fail as _fail
from expertrag.cli_common import print_json as _print_json
from expertrag.cli_communities import communities_app
from expertrag.cli_experts import experts_app
from expertrag.cli_qa import eval_qa
from expertrag.errors import ExpertRAGError
from expertrag.logging_config import configure_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Retrieval and knowledge-graph augmented generation.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval and answering quality.")
app.add_typer(eval_app, name="eval")
eval_app.command("qa")(eval_qa)
app.add_typer(experts_app, name="experts")
app.add_typer(communities_app, name="communities")

KB_OPTION = typer.Option(Path("kb"), "--kb", help="Knowledge base folder.", envvar="EXPERTRAG_KB")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of text.")
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Log progress at INFO level to stderr.")
NEO4J_URI_OPTION = typer.Option(None, "--neo4j-uri", help="Neo4j Bolt URI (default: EXPERTRAG_NEO4J_URI or bolt://127.0.0.1:7687).")
NEO4J_USER_OPTION = typer.Option(None, "--neo4j-user", help="Neo4j user (default: EXPERTRAG_NEO4J_USER; none for a server without auth).")
NEO4J_PASSWORD_OPTION = typer.Option(None, "--neo4j-password", envvar="EXPERTRAG_NEO4J_PASSWORD", help="Neo4j password.")
RETRIEVER_OPTION = typer.Option(
    "hybrid", "--retriever",
    help="dense, bm25, hybrid (dense + BM25 fusion), graph (personalized PageRank from the entities the query "
         "names) or graph+hybrid (all three fused).",
)
ROUTER_OPTION = typer.Option(
    None, "--router",
    help="Encode the query with the expert (in <kb>/experts) that this routing strategy picks: "
         "pilot, centroid, fusion, multitask or fixed:NAME. Prints the expert and the similarities.",
)



def _routing_line(decision: Any) -> str:
    from expertrag.retrievers.experts.kb_routing import routing_summary

    return routing_summary(decision)


def _escape_cell(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")



@app.command()
def ingest(
    corpus: Path = typer.Argument(..., help="BEIR folder, .jsonl file or folder of .txt/.md files."),
    kb: Path = KB_OPTION,
    collection: str = typer.Option("default", "--collection", "-c", help="Collection to ingest into."),
    corpus_format: str = typer.Option("auto", "--format", help="auto, beir, jsonl or text."),
    on_error: str = typer.Option("raise", "--on-error", help="raise: stop on a bad record and write nothing; skip: skip and count it."),
    id_field: str = typer.Option("_id", help="JSON field with the document id."),
    title_field: str = typer.Option("title", help="JSON field with the title ('' for none)."),
    text_field: str = typer.Option("text", help="JSON field with the text."),
    graph_store: str = typer.Option("rdflib", "--graph-store", help="rdflib (embedded file only) or neo4j (also sync a Neo4j server)."),
    neo4j_uri: Optional[str] = NEO4J_URI_OPTION,
    neo4j_user: Optional[str] = NEO4J_USER_OPTION,
    neo4j_password: Optional[str] = NEO4J_PASSWORD_OPTION,
    as_json: bool = JSON_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Ingest a corpus into a knowledge base (created when missing); re-running adds only what changed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from expertrag.knowledge_base import KnowledgeBase

    configure_logging(verbose)
    if on_error not in ("raise", "skip"):
        _fail(ValueError(f"Invalid --on-error {on_error!r}: use raise or skip"))
    if graph_store not in ("rdflib", "neo4j"):
        _fail(ValueError(f"Invalid --graph-store {graph_store!r}: use rdflib or neo4j"))
    try:
        with KnowledgeBase.open(kb, create=True) as knowledge_base:
            # Connect first: an unreachable Neo4j fails the command before anything is written.
            extra = [knowledge_base.connect_neo4j(neo4j_uri, neo4j_user, neo4j_password)] if graph_store == "neo4j" else []
            with Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          disable=as_json or not sys.stderr.isatty(), console=None, transient=True) as bar:
                task = bar.add_task("documents", total=None)
                report = knowledge_base.ingest(
                    corpus, collection, corpus_format, on_error, id_field, title_field or None, text_field,  # type: ignore[arg-type]
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    graph_stores=extra,
                )
            for store in extra:
                store.close()
    except ExpertRAGError as error:
        _fail(error)
    result = {**report.__dict__, "documents_per_second": round(report.documents_per_second, 2), "kb": str(kb)}
    if as_json:
        _print_json(result)
        return
    typer.echo(
        f"Ingested {report.documents_added} documents into {kb} (collection {collection!r}): "
        f"{report.chunks_added} chunks, {report.entities_added} entity records, {report.relations_added} relations; "
        f"{report.documents_unchanged} unchanged, {report.documents_skipped} skipped; "
        f"{report.seconds:.1f} s ({report.documents_per_second:.1f} documents/s)"
    )
    for message in report.errors[:10]:
        typer.echo(f"  skipped: {message}")


@app.command()
def query(
    question: str = typer.Argument(..., help="The question."),
    kb: Path = KB_OPTION,
    collection: Optional[str] = typer.Option(None, "--collection", "-c", help="Collection to search (default: all)."),
    k: Optional[int] = typer.Option(None, "--k", help="Passages given to the LLM."),
    retriever: str = RETRIEVER_OPTION,
    router: Optional[str] = ROUTER_OPTION,
    mode: str = typer.Option(
        "local", "--mode",
        help="local: answer from retrieved passages; global: from community summaries "
             "(run `expertrag communities build` first); pike: split into sub-questions, answer each, compose.",
    ),
    as_json: bool = JSON_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Answer a question from the knowledge base with citations."""
    from expertrag.knowledge_base import KnowledgeBase

    configure_logging(verbose)
    if mode not in ("local", "global", "pike"):
        _fail(ValueError(f"Invalid --mode {mode!r}: use local, global or pike"))
    if router is not None and mode != "local":
        _fail(ValueError(f"--router applies to --mode local only, not {mode!r}: drop --router or use --mode local"))
    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            if mode == "local":
                answer = knowledge_base.answer(question, collection, k, retriever, router=router)  # type: ignore[arg-type]
            else:
                answer = knowledge_base.answer_in_mode(question, mode, collection, k, retriever)  # type: ignore[arg-type]
    except ExpertRAGError as error:
        _fail(error)
    if as_json:
        _print_json(answer.to_dict())
        return
    if getattr(answer, "routing", None) is not None:
        typer.echo(f"  {_routing_line(answer.routing)}")  # type: ignore[attr-defined]
    for number, sub in enumerate(answer.sub_questions, start=1):
        typer.echo(f"  sub-question {number}: {sub['question']} -> {sub['answer']}")
    for community in answer.communities:
        if community["used"]:
            typer.echo(f"  community {community['community_id']} ({community['title']}, score {community['score']}): "
                       f"{community['answer']}")
    typer.echo(answer.answer)
    for citation in answer.citations:
        typer.echo(f"  [{citation.number}] {citation.collection}/{citation.doc_id} chunk {citation.chunk_id} "
                   f"chars {citation.start}-{citation.end}: {citation.quote}")
    _echo_graph_evidence(answer.links, answer.paths)
    for note in answer.notes:
        typer.echo(f"  note: {note}")


def _echo_graph_evidence(links: list[dict[str, Any]], paths: list[dict[str, Any]]) -> None:
    """Print the entity links and relation paths of a graph retrieval."""
    if links:
        linked = ", ".join(f"{link['text']!r} -> {link['name'] or 'title'} ({link['method']})" for link in links)
        typer.echo(f"  linked: {linked}")
    for path in paths:
        steps = "; ".join(f"{step['subject']} | {step['predicate']} | {step['object']} (chunk {step['chunk_id']} "
                          f"chars {step['start']}-{step['end']})" for step in path["steps"])
        typer.echo(f"  path: {steps}")


@app.command()
def retrieve(
    text: str = typer.Argument(..., help="The query."),
    kb: Path = KB_OPTION,
    collection: Optional[str] = typer.Option(None, "--collection", "-c"),
    k: int = typer.Option(10, "--k", help="Chunks to return."),
    retriever: str = RETRIEVER_OPTION,
    router: Optional[str] = ROUTER_OPTION,
    as_json: bool = JSON_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Print the best chunks for a query; with --router, first the expert that served it."""
    from expertrag.knowledge_base import KnowledgeBase

    configure_logging(verbose)
    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            if router is None and retriever in ("graph", "graph+hybrid"):
                retrieval = knowledge_base.retrieval(text, collection, k, retriever)  # type: ignore[arg-type]
                if as_json:
                    _print_json(retrieval.to_dict())
                    return
                _echo_graph_evidence([link.to_dict() for link in retrieval.links],
                                     [path.to_dict() for path in retrieval.paths])
                for note in retrieval.notes:
                    typer.echo(f"  note: {note}")
                hits = retrieval.hits
            else:
                hits = knowledge_base.retrieve(text, collection, k, retriever, router=router)  # type: ignore[arg-type]
    except ExpertRAGError as error:
        _fail(error)
    routing = getattr(hits, "routing", None)
    if as_json:
        # Without --router the output stays a plain list of hits.
        _print_json(hits.to_dict() if routing is not None else [hit.to_dict() for hit in hits])  # type: ignore[attr-defined]
        return
    if routing is not None:
        typer.echo(_routing_line(routing))
    for rank, hit in enumerate(hits, start=1):
        preview = hit.text[:160].replace("\n", " ")
        typer.echo(f"{rank:>3}. {hit.score:.4f} {hit.collection}/{hit.doc_id} {hit.ranks} {preview}")


@app.command()
def stats(kb: Path = KB_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Print the counts of a knowledge base."""
    from expertrag.knowledge_base import KnowledgeBase

    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            result = knowledge_base.stats()
    except ExpertRAGError as error:
        _fail(error)
    _print_json(result) if as_json else typer.echo(json.dumps(result, indent=2))


@app.command()
def delete(
    doc_id: str = typer.Argument(..., help="Id of the document to delete."),
    kb: Path = KB_OPTION,
    collection: str = typer.Option("default", "--collection", "-c"),
    graph_store: str = typer.Option("rdflib", "--graph-store", help="rdflib, or neo4j to also sync a Neo4j server."),
    neo4j_uri: Optional[str] = NEO4J_URI_OPTION,
    neo4j_user: Optional[str] = NEO4J_USER_OPTION,
    neo4j_password: Optional[str] = NEO4J_PASSWORD_OPTION,
) -> None:
    """Delete a document with its chunks, vectors, mentions and the relations only it supported."""
    from expertrag.knowledge_base import KnowledgeBase

    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            extra = [knowledge_base.connect_neo4j(neo4j_uri, neo4j_user, neo4j_password)] if graph_store == "neo4j" else []
            deleted = knowledge_base.delete_document(collection, doc_id, graph_stores=extra)
            for store in extra:
                store.close()
    except ExpertRAGError as error:
        _fail(error)
    if not deleted:
        _fail(ValueError(f"Document {doc_id!r} not found in collection {collection!r}"))
    typer.echo(f"Deleted {collection}/{doc_id}")


@app.command()
def export(
    target_uri: Optional[str] = typer.Argument(None, metavar="[URI]", help="With --to neo4j: the server's Bolt URI."),
    kb: Path = KB_OPTION,
    export_format: str = typer.Option("turtle", "--format", help="turtle, nt or jsonld (file export)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (file export)."),
    to: str = typer.Option("file", "--to", help="file: write RDF to --out; neo4j: sync the graph into the Neo4j server at URI."),
    neo4j_user: Optional[str] = NEO4J_USER_OPTION,
    neo4j_password: Optional[str] = NEO4J_PASSWORD_OPTION,
) -> None:
    """Export the knowledge graph as an RDF file, or into a Neo4j server (running it twice changes nothing)."""
    from expertrag.knowledge_base import KnowledgeBase

    if to not in ("file", "neo4j"):
        _fail(ValueError(f"Invalid --to {to!r}: use file or neo4j"))
    if to == "file" and out is None:
        _fail(ValueError("Missing --out FILE for a file export"))
    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            if to == "neo4j":
                with knowledge_base.connect_neo4j(target_uri, neo4j_user, neo4j_password) as graph_store:
                    report = knowledge_base.sync_graph_store(graph_store)
                    counts = graph_store.counts()
                typer.echo(f"Synced {kb} into Neo4j: {report.added} added, {report.removed} removed in "
                           f"{report.seconds:.1f} s; {counts['entities']} entities, {counts['relations']} relations")
                return
            triples = knowledge_base.export(out, export_format)  # type: ignore[arg-type]
    except ExpertRAGError as error:
        _fail(error)
    typer.echo(f"Wrote {triples} triples to {out}")


@app.command()
def sparql(
    sparql_query: str = typer.Argument(..., metavar="QUERY", help="SPARQL SELECT or ASK; prefixes er:, rel:, entity:, chunk: are bound."),
    kb: Path = KB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run a SPARQL query over the knowledge graph."""
    from expertrag.knowledge_base import KnowledgeBase

    try:
        with KnowledgeBase.open(kb) as knowledge_base:
            rows = knowledge_base.sparql(sparql_query)
    except ExpertRAGError as error:
        _fail(error)
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        # Tabs separate columns, so tabs, newlines and backslashes inside values are escaped.
        typer.echo("\t".join(_escape_cell(value) for value in row.values()))


@app.command()
def serve(
    kb: Path = KB_OPTION,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Serve the REST API (POST /query, POST /retrieve, GET /health; docs at /docs)."""
    import uvicorn

    from expertrag.api.app import create_app

    configure_logging(verbose)
    uvicorn.run(create_app(kb), host=host, port=port, log_level="info" if verbose else "warning")


@eval_app.command("beir")
def eval_beir(
    dataset_dirs: list[Path] = typer.Argument(..., metavar="DATASET...", help="BEIR folders: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."),
    retriever: list[str] = typer.Option(["dense"], "--retriever", help="dense, bm25 or hybrid; repeat for several."),
    granularity: str = typer.Option("document", help="document: one vector per document (as MTEB); chunk: ingestion's chunks."),
    split: str = typer.Option("test", help="Qrels split to score."),
    kb: Optional[Path] = typer.Option(None, "--kb", help="Search this knowledge base's collection instead of encoding the dataset."),
    collection: Optional[str] = typer.Option(None, "--collection", "-c", help="Collection in --kb (default: the dataset folder name)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write per-query and mean values as JSON here (with --router: the full table as JSON and Markdown)."),
    router: Optional[str] = typer.Option(
        None, "--router",
        help="Score routed dense retrieval instead: pilot, centroid, fusion, multitask, oracle or fixed:NAME, "
             "in the router table (document vectors, every expert and strategy; see expertrag.eval.router_table).",
    ),
    experts_dir: Optional[Path] = typer.Option(None, "--experts-dir", help="With --router: the experts folder (default: <--kb>/experts)."),
    as_json: bool = JSON_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Print nDCG@10, recall@100 and MRR@10 of each retriever on BEIR datasets, or with --router the routing table."""
    import time as clock

    from expertrag.atomic import atomic_write_bytes
    from expertrag.eval.beir import BeirDataset, BeirEvaluator, BeirResult, run_kb_queries
    from expertrag.eval.metrics import evaluate_run
    from expertrag.retrievers.encoder import Encoder
    from expertrag.settings import Settings

    configure_logging(verbose)
    if router is not None:
        _eval_router(dataset_dirs, split, kb, experts_dir, router, out, as_json)
        return
    if collection is not None and len(dataset_dirs) > 1:
        _fail(ValueError("--collection names one collection: give one DATASET with it"))
    results: list[BeirResult] = []
    try:
        settings = Settings()
        for dataset_dir in dataset_dirs:
            dataset = BeirDataset.load(dataset_dir, split)
            if kb is not None:
                from expertrag.knowledge_base import KnowledgeBase

                with KnowledgeBase.open(kb, settings) as knowledge_base:
                    name = collection or dataset.name
                    for name_of_retriever in retriever:
                        started = clock.perf_counter()
                        run = run_kb_queries(knowledge_base, name, dataset, name_of_retriever)
                        means, per_query = evaluate_run(dataset.qrels, run)
                        results.append(BeirResult(dataset.name, split, name_of_retriever, f"kb:{name}",
                                                  knowledge_base.manifest["encoder"], len(dataset.queries),
                                                  len(dataset.documents), means, per_query, clock.perf_counter() - started))
            else:
                encoder = Encoder.shared(settings.encoder, settings.device, settings.encode_batch_size)
                evaluator = BeirEvaluator(dataset, encoder, settings, granularity)  # type: ignore[arg-type]
                results += [evaluator.evaluate(name_of_retriever, split) for name_of_retriever in retriever]  # type: ignore[arg-type]
    except ExpertRAGError as error:
        _fail(error)

    payload = [result.to_dict() for result in results]
    if out is not None:
        atomic_write_bytes(out, json.dumps(payload, indent=2).encode("utf-8"))
    if as_json:
        _print_json([{k: v for k, v in item.items() if k != "per_query"} for item in payload])
        return
    typer.echo(f"{'dataset':<16}{'retriever':<10}{'granularity':<16}{'nDCG@10':>9}{'R@100':>8}{'MRR@10':>8}{'queries':>9}")
    for result in results:
        m = result.metrics
        typer.echo(f"{result.dataset:<16}{result.retriever:<10}{result.granularity:<16}"
                   f"{m['ndcg@10']:>9.4f}{m['recall@100']:>8.4f}{m['mrr@10']:>8.4f}{result.queries:>9}")


def _eval_router(dataset_dirs: list[Path], split: str, kb: Optional[Path], experts_dir: Optional[Path], strategy: str,
                 out: Optional[Path], as_json: bool) -> None:
    """Run ``eval beir --router``: score the router table and print the strategy's column."""
    import shlex

    from expertrag.eval.router_eval import evaluate_router, summary, summary_text, write_outputs
    from expertrag.retrievers.experts.registry import EXPERTS_FOLDER
    from expertrag.settings import Settings

    if experts_dir is None and kb is None:
        _fail(ValueError("--router needs the experts: pass --experts-dir or --kb (whose experts folder is used)"))
    experts_root = experts_dir if experts_dir is not None else kb / EXPERTS_FOLDER  # type: ignore[operator]
    try:
        table, column = evaluate_router(dataset_dirs, split, experts_root, strategy, Settings())
    except ExpertRAGError as error:
        _fail(error)
    if out is not None:
        arguments = [*map(str, dataset_dirs), "--split", split, "--router", strategy, "--experts-dir", str(experts_root),
                     "--out", str(out)]
        write_outputs(table, out, "expertrag eval beir " + " ".join(shlex.quote(a) for a in arguments))
    if as_json:
        _print_json(summary(table, column))
        return
    for line in summary_text(table, column):
        typer.echo(line)


@eval_app.command("extraction")
def eval_extraction(
    dataset_dir: Path = typer.Argument(..., help="Extraction data set folder: conll04, scierc, biored, redocred or webnlg2020_text2rdf."),
    extractor: str = typer.Option("spacy-rules", "--extractor", help="spacy-rules, spacy-rules-v1 (the first rule set) or llm."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N records of the split."),
    split: str = typer.Option("test", help="Split to read: <split>.jsonl in the data set folder."),
    schema: Optional[Path] = typer.Option(None, "--schema", help="Schema file mapping labels (default: the bundled file of the data set)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the scores with per-type values as JSON here."),
    as_json: bool = JSON_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Print entity and relation precision, recall and F1 (strict and relaxed, per type) and documents/s."""
    from expertrag.eval.extraction_cli import run_extraction_command

    configure_logging(verbose)
    try:
        run_extraction_command(dataset_dir, extractor, limit, split, schema, out, as_json)
    except (ExpertRAGError, ValueError) as error:
        _fail(error)


@app.command()
def demo(
    kb: Path = typer.Option(Path("demo_kb"), "--kb", help="Knowledge base folder for the demo."),
    question: Optional[str] = typer.Option(None, help="Question to ask (default: a sample question)."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Ingest the bundled SciFact sample and answer a sample question with citations."""
    from expertrag.knowledge_base import KnowledgeBase
    from expertrag.sample import SAMPLE_DIR, SAMPLE_QUESTION

    configure_logging(verbose)
    question = question or SAMPLE_QUESTION
    try:
        with KnowledgeBase.open(kb, create=True) as knowledge_base:
            report = knowledge_base.ingest(SAMPLE_DIR, collection="scifact-sample")
            typer.echo(f"Knowledge base {kb}: {report.documents_added} documents added, "
                       f"{report.documents_unchanged} already there; {knowledge_base.stats()['totals']}")
            typer.echo(f"Question: {question}")
            answer = knowledge_base.answer(question)
    except ExpertRAGError as error:
        _fail(error)
    typer.echo(f"Answer: {answer.answer}")
    for citation in answer.citations:
        typer.echo(f"  [{citation.number}] scifact-sample/{citation.doc_id} chars {citation.start}-{citation.end}: {citation.quote}")


def main() -> None:
    """Entry point of the ``expertrag`` console script."""
    app()


if __name__ == "__main__":
    main()
