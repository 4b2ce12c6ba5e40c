"""Tests of routed retrieval through a knowledge base, its CLI and its REST API.

A knowledge base contains the two toy domains of tests/test_experts.py as two collections.
Each domain's queries swap three words of its documents for made-up words, so the base
encoder ranks their documents poorly and a small expert trained on that domain's queries
ranks them well. ``expertrag experts train --kb KB --collection NAME`` trains one expert per
collection into ``<kb>/experts``, the folder that ``KnowledgeBase.retrieve(router=...)`` reads.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from expertrag.errors import InputError
from expertrag.knowledge_base import KnowledgeBase
from expertrag.retrievers.experts import BASE_EXPERT, ExpertRegistry
from expertrag.retrievers.experts.kb_routing import RoutedAnswer, RoutedHits, routing_summary
from expertrag.settings import Settings
from tests.test_api import running_server
from tests.test_experts import DOMAINS, HELD_OUT, toy_documents, write_beir

# Epochs, batch size and learning rate that make a toy expert clearly better than the base encoder.
TRAIN_OPTIONS = ["--epochs", "4", "--batch-size", "16", "--recipe", "in-batch", "--learning-rate", "1e-3"]


def held_out(domain: str) -> list[tuple[str, str]]:
    """Return (relevant document id, query text) of the domain's queries left out of training."""
    return [(doc_id, query) for doc_id, _, query in toy_documents(domain)[:HELD_OUT]]


def dense_dicts(kb: KnowledgeBase, query: str, collection: str | None, router: str | None = None) -> list[dict]:
    return [hit.to_dict() for hit in kb.retrieve(query, collection, 5, "dense", router=router)]


@pytest.fixture(autouse=True)
def restore_package_logger() -> Iterator[None]:
    """Undo ``configure_logging``, which CLI commands call, so later tests keep their log capture."""
    package_logger = logging.getLogger("expertrag")
    saved = (package_logger.handlers[:], package_logger.level, package_logger.propagate)
    yield
    package_logger.handlers[:], package_logger.level, package_logger.propagate = saved


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> SimpleNamespace:
    """A knowledge base with one collection and one expert per toy domain.

    Before training it records the dense hits and the routed result of one query per domain,
    so tests can compare them with what the knowledge base returns once experts exist.
    """
    root = tmp_path_factory.mktemp("router_kb")
    kb_path = root / "kb"
    folders = {}
    for domain in DOMAINS:
        triples = toy_documents(domain)
        documents = [{"_id": doc_id, "title": "", "text": text} for doc_id, text, _ in triples]
        queries = {f"q-{doc_id}": query for doc_id, _, query in triples}
        folder = write_beir(root / "data" / domain, documents, queries,
                            [(f"q-{doc_id}", doc_id) for doc_id, _, _ in triples[HELD_OUT:]], "train")
        write_beir(folder, documents, queries, [(f"q-{doc_id}", doc_id) for doc_id, _, _ in triples[:HELD_OUT]], "test")
        folders[domain] = folder

    before: dict[str, list[dict]] = {}
    before_routed = {}
    with KnowledgeBase.open(kb_path, settings, create=True) as kb:
        for domain, folder in folders.items():
            kb.ingest(folder, collection=domain)
        for domain in DOMAINS:
            query = held_out(domain)[0][1]
            before[domain] = dense_dicts(kb, query, domain)
            before_routed[domain] = kb.retrieve(query, domain, 5, "dense", router="pilot")
    experts_folder_before = (kb_path / "experts").exists()

    from expertrag.cli_experts import experts_app

    trained = {}
    for domain, folder in folders.items():
        result = CliRunner().invoke(experts_app, ["train", "--kb", str(kb_path), "--collection", domain, "--data",
                                                  str(folder), "--split", "train", *TRAIN_OPTIONS, "--json"])
        assert result.exit_code == 0, result.output
        trained[domain] = json.loads(result.stdout)
    return SimpleNamespace(root=root, kb_path=kb_path, folders=folders, before=before, before_routed=before_routed,
                           experts_folder_before=experts_folder_before, trained=trained)


@pytest.fixture()
def toy_kb(toy: SimpleNamespace, settings: Settings) -> Iterator[KnowledgeBase]:
    kb = KnowledgeBase.open(toy.kb_path, settings)
    yield kb
    kb.close()


@pytest.fixture()
def kb_copy(toy: SimpleNamespace, tmp_path: Path) -> Path:
    """A copy of the toy knowledge base that a test may change."""
    copy = tmp_path / "kb"
    shutil.copytree(toy.kb_path, copy)
    return copy


# Where experts live


def test_cli_train_writes_into_kb_experts(toy):
    registry = ExpertRegistry(toy.kb_path / "experts")
    assert registry.names() == sorted(DOMAINS)
    for domain in DOMAINS:
        assert toy.trained[domain]["path"] == str(toy.kb_path / "experts" / domain)
        source = registry.get(domain).metadata["domains"][0]["source"]
        assert source["collection"] == domain
        assert source["kind"] == "qrels"


def test_cli_train_rejects_invalid_recipe_options(toy):
    from expertrag.cli_experts import experts_app

    base_args = ["train", "other", "--kb", str(toy.kb_path), "--collection", "animals", "--data",
                 str(toy.folders["animals"]), "--epochs", "1"]
    unknown = CliRunner().invoke(experts_app, [*base_args, "--recipe", "nothing"])
    assert unknown.exit_code == 2
    assert "unknown --recipe nothing" in unknown.output
    negative = CliRunner().invoke(experts_app, [*base_args, "--learning-rate", "-1"])
    assert negative.exit_code == 2
    assert "--learning-rate must be positive" in negative.output
    assert "other" not in ExpertRegistry(toy.kb_path / "experts").names()


def test_router_without_experts_uses_base(toy):
    assert toy.experts_folder_before is False
    for domain in DOMAINS:
        routed = toy.before_routed[domain]
        assert isinstance(routed, RoutedHits)
        assert routed.routing.expert == BASE_EXPERT
        assert "no experts" in routed.routing.reason
        assert [hit.to_dict() for hit in routed] == toy.before[domain]


# Python API


def test_retrieve_without_router_is_unchanged(toy, toy_kb):
    for domain in DOMAINS:
        hits = toy_kb.retrieve(held_out(domain)[0][1], domain, 5, "dense")
        assert type(hits) is list
        assert [hit.to_dict() for hit in hits] == toy.before[domain]


def test_pilot_routing_reports_expert_and_helps(toy_kb):
    for domain in DOMAINS:
        other = next(name for name in DOMAINS if name != domain)
        correct = {"base": 0, "routed": 0}
        experts = []
        for doc_id, query in held_out(domain):
            base = toy_kb.retrieve(query, domain, 5, "dense")
            routed = toy_kb.retrieve(query, domain, 5, "dense", router="pilot")
            assert isinstance(routed, RoutedHits)
            assert len(routed) == 5
            assert set(routed.routing.similarities) >= {domain, other}
            assert routed.routing.strategy == "pilot"
            experts.append(routed.routing.expert)
            correct["base"] += base[0].doc_id == doc_id
            correct["routed"] += routed[0].doc_id == doc_id
        # The base encoder is a routing candidate too and serves the queries nearest its pilots.
        assert experts.count(domain) >= 0.8 * len(experts), f"{domain}: routed to {experts}"
        assert other not in experts
        assert correct["routed"] >= correct["base"] + 5, f"{domain}: top-1 hits {correct}"


def test_routed_hits_say_why(toy_kb):
    query = held_out("vehicles")[0][1]
    routed = toy_kb.retrieve(query, "vehicles", 3, "dense", router="pilot")
    decision = routed.routing
    assert decision.expert == max(decision.similarities, key=decision.similarities.get)
    assert "pilot embeddings" in decision.reason
    payload = routed.to_dict()
    assert payload["routing"]["expert"] == decision.expert
    assert [hit["chunk_id"] for hit in payload["hits"]] == [hit.chunk_id for hit in routed]
    line = routing_summary(decision)
    assert line.startswith(f"routed to expert {decision.expert!r} by strategy pilot")
    assert "similarities: " in line


def test_routing_across_collections(toy_kb):
    query = held_out("animals")[1][1]
    routed = toy_kb.retrieve(query, None, 6, "dense", router="pilot")
    assert isinstance(routed, RoutedHits)
    assert routed.routing.expert == "animals"
    assert len(routed) == 6
    assert {hit.collection for hit in routed} <= set(DOMAINS)
    assert routed[0].collection == "animals"


def test_fixed_fusion_and_invalid_strategies(toy_kb):
    query = held_out("animals")[2][1]
    fixed = toy_kb.retrieve(query, "animals", 5, "dense", router="fixed:vehicles")
    assert fixed.routing.expert == "vehicles"
    assert fixed.routing.similarities == {}
    own = toy_kb.retrieve(query, "animals", 5, "dense", router="fixed:animals")
    assert [hit.chunk_id for hit in own] != [hit.chunk_id for hit in fixed]

    fused = toy_kb.retrieve(query, "animals", 5, "dense", router="fusion")
    assert fused.routing.expert == "fusion"
    assert len(fused) == 5
    scores = [hit.score for hit in fused]
    assert scores == sorted(scores, reverse=True)

    missing = toy_kb.retrieve(query, "animals", 5, "dense", router="fixed:nothing")
    assert missing.routing.expert == BASE_EXPERT
    assert "not available" in missing.routing.reason

    with pytest.raises(InputError, match="only in evaluation"):
        toy_kb.retrieve(query, "animals", 5, "dense", router="oracle")
    with pytest.raises(InputError, match="Unknown routing strategy"):
        toy_kb.retrieve(query, "animals", 5, "dense", router="nearest")
    with pytest.raises(InputError, match="empty"):
        toy_kb.retrieve("  ", "animals", 5, "dense", router="pilot")


def test_hybrid_retrieval_routes_dense_part(toy_kb):
    query = held_out("vehicles")[3][1]
    routed = toy_kb.retrieve(query, "vehicles", 5, "hybrid", router="fixed:vehicles")
    plain = toy_kb.retrieve(query, "vehicles", 5, "hybrid")
    expert_dense = toy_kb.retrieve(query, "vehicles", 100, "dense", router="fixed:vehicles")
    dense_rank = {hit.chunk_id: rank for rank, hit in enumerate(expert_dense, start=1)}
    assert routed.routing.expert == "vehicles"
    for hit in routed:
        assert hit.ranks.get("dense") == dense_rank.get(hit.chunk_id), hit.chunk_id
    assert [hit.ranks for hit in routed] != [hit.ranks for hit in plain]


def test_prepare_many_groups_by_expert(toy_kb):
    queries = [held_out("animals")[0][1], held_out("vehicles")[0][1], held_out("animals")[1][1]]
    router = toy_kb.expert_router()
    batch = router.prepare_many(queries, "pilot")
    for query, routed in zip(queries, batch):
        single = router.prepare(query, "pilot")
        assert routed.decision.expert == single.decision.expert
        assert np.allclose(routed.vectors[routed.decision.expert], single.vectors[single.decision.expert], atol=1e-5)
    assert [routed.decision.expert for routed in batch] == ["animals", "vehicles", "animals"]


# Broken and changed experts


def test_corrupt_and_missing_adapters_give_base_results(kb_copy, settings, caplog):
    experts = kb_copy / "experts"
    (experts / "vehicles" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    (experts / "animals" / "adapter_config.json").unlink()
    query = held_out("vehicles")[4][1]
    with KnowledgeBase.open(kb_copy, settings) as kb, caplog.at_level(logging.WARNING, logger="expertrag"):
        plain = dense_dicts(kb, query, "vehicles")
        routed = kb.retrieve(query, "vehicles", 5, "dense", router="pilot")
    assert routed.routing.expert == BASE_EXPERT
    assert "no usable domain experts" in routed.routing.reason
    assert [hit.to_dict() for hit in routed] == plain
    assert "Routing skips expert 'vehicles'" in caplog.text
    assert "Routing skips expert 'animals'" in caplog.text


def test_router_follows_expert_removal(kb_copy, settings):
    query = held_out("vehicles")[5][1]
    with KnowledgeBase.open(kb_copy, settings) as kb:
        assert kb.retrieve(query, "vehicles", 5, "dense", router="pilot").routing.expert == "vehicles"
        ExpertRegistry(kb_copy / "experts").remove("vehicles")
        after = kb.retrieve(query, "vehicles", 5, "dense", router="pilot")
    assert after.routing.expert in ("animals", BASE_EXPERT)
    assert "vehicles" not in after.routing.similarities


# Command line


def test_cli_retrieve_prints_routing(toy):
    from expertrag.cli import app

    query = held_out("animals")[0][1]
    runner = CliRunner()
    base_args = ["retrieve", query, "--kb", str(toy.kb_path), "-c", "animals", "--retriever", "dense", "--k", "3"]
    text = runner.invoke(app, [*base_args, "--router", "pilot"])
    assert text.exit_code == 0, text.output
    first = text.stdout.splitlines()[0]
    assert first.startswith("routed to expert 'animals' by strategy pilot")
    assert "vehicles" in first

    routed = json.loads(runner.invoke(app, [*base_args, "--router", "pilot", "--json"]).stdout)
    assert routed["routing"]["expert"] == "animals"
    assert len(routed["hits"]) == 3
    plain = json.loads(runner.invoke(app, [*base_args, "--json"]).stdout)
    assert isinstance(plain, list)
    assert plain == toy.before["animals"][:3]

    invalid = runner.invoke(app, [*base_args, "--router", "oracle"])
    assert invalid.exit_code == 2
    assert "only in evaluation" in invalid.output


def test_cli_query_rejects_router_with_other_mode(toy):
    from expertrag.cli import app

    result = CliRunner().invoke(app, ["query", "what", "--kb", str(toy.kb_path), "--router", "pilot", "--mode", "pike"])
    assert result.exit_code == 2
    assert "--router applies to --mode local only" in result.output


def test_cli_eval_beir_router(toy, tmp_path):
    from expertrag.cli import app

    folders = [str(toy.folders[domain]) for domain in DOMAINS]
    out = tmp_path / "routed.json"
    result = CliRunner().invoke(app, ["eval", "beir", *folders, "--router", "pilot", "--kb", str(toy.kb_path),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["dataset"]: row for row in json.loads(result.stdout)}
    assert list(rows) == [*DOMAINS, "mean"]
    for domain in DOMAINS:
        assert rows[domain]["queries"] == HELD_OUT
        assert rows[domain]["pilot"] > rows[domain][BASE_EXPERT] + 0.1
        assert rows[domain]["routing"].get(domain, 0) >= 0.6 * HELD_OUT
    assert rows["mean"]["pilot"] == pytest.approx(np.mean([rows[d]["pilot"] for d in DOMAINS]))
    table = json.loads(out.read_text())
    assert {"fusion", "centroid", "oracle", *DOMAINS} <= set(table["columns"])
    assert table["command"].startswith("expertrag eval beir ")
    assert "| **mean** |" in out.with_suffix(".md").read_text()

    fixed = CliRunner().invoke(app, ["eval", "beir", folders[0], "--router", "fixed:vehicles", "--kb", str(toy.kb_path)])
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stdout.splitlines()[0].split()[4] == "vehicles"
    unknown = CliRunner().invoke(app, ["eval", "beir", folders[0], "--router", "fixed:nothing", "--kb", str(toy.kb_path)])
    assert unknown.exit_code == 2
    assert "Unknown expert 'nothing'" in unknown.output
    no_experts = CliRunner().invoke(app, ["eval", "beir", folders[0], "--router", "pilot", "--experts-dir",
                                          str(tmp_path / "none")])
    assert no_experts.exit_code == 2
    assert "No usable experts" in no_experts.output


# REST API


@pytest.fixture(scope="module")
def toy_client(toy: SimpleNamespace, settings: Settings) -> Iterator[httpx.Client]:
    with running_server(toy.kb_path, settings) as base_url:
        # A generous read timeout, because /query loads and runs the local LLM on CPU.
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(10.0, read=600.0)) as client:
            yield client


def test_api_retrieve_returns_routing(toy, toy_client):
    query = held_out("vehicles")[0][1]
    request = {"query": query, "collection": "vehicles", "k": 5, "retriever": "dense"}
    routed = toy_client.post("/retrieve", json={**request, "router": "pilot"})
    assert routed.status_code == 200, routed.text
    body = routed.json()
    assert body["routing"]["expert"] == "vehicles"
    assert body["routing"]["strategy"] == "pilot"
    assert set(body["routing"]["similarities"]) >= set(DOMAINS)
    assert len(body["hits"]) == 5

    plain = toy_client.post("/retrieve", json=request).json()
    assert plain["routing"] is None
    assert plain["hits"] == toy.before["vehicles"]

    oracle = toy_client.post("/retrieve", json={**request, "router": "oracle"})
    assert oracle.status_code == 422
    assert "only in evaluation" in oracle.json()["detail"]


def test_api_query_returns_routing(toy_client):
    question = held_out("animals")[0][1]
    response = toy_client.post("/query", json={"question": question, "collection": "animals", "retriever": "dense",
                                               "k": 3, "router": "pilot"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["routing"]["expert"] == "animals"
    assert "animals" in body["routing"]["similarities"]
    assert body["question"] == question

    pike = toy_client.post("/query", json={"question": question, "router": "pilot", "mode": "pike"})
    assert pike.status_code == 422
    assert "Routing applies to mode 'local' only" in pike.json()["detail"]


def test_routed_answer_keeps_answer_fields():
    from expertrag.rag.answerer import Answer
    from expertrag.retrievers.experts import RoutingDecision

    answer = Answer(question="q", answer="a", found=True, notes=["n"], seconds=1.5)
    routed = RoutedAnswer.from_answer(answer, RoutingDecision("animals", "pilot", {"animals": 0.5}, "nearest"))
    payload = routed.to_dict()
    assert payload["routing"] == {"expert": "animals", "strategy": "pilot", "similarities": {"animals": 0.5},
                                  "reason": "nearest"}
    assert {key: value for key, value in payload.items() if key != "routing"} == answer.to_dict()
