"""Tests of Leiden communities, their storage and their summaries.

The graphs are written by hand into a real SQLite record store. Summaries come from a
scripted backend that implements the LLMBackend protocol, because the cases (valid,
malformed and failing replies) must be exact. The real local model writes summaries in
tests/test_global_search.py.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from expertrag.cli import app
from expertrag.errors import LLMError
from expertrag.kg_build.community_store import CommunityStore, community_id_for
from expertrag.kg_build.store import RecordStore
from expertrag.rag.communities import build_communities, detect_communities, load_entity_graph
from expertrag.rag.community_summaries import MAX_CONSECUTIVE_FAILURES, CommunitySummarizer
from expertrag.rag.llm import LLMBackend
from expertrag.settings import Settings

VALID_SUMMARY = '{"title": "Cluster topic", "summary": "These entities are related."}'


class ScriptedBackend:
    """An LLMBackend whose replies come from a function of the user message."""

    name = "scripted"

    def __init__(self, reply: Callable[[str], str]) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    def complete(self, messages, *, max_tokens=None, json_schema=None, temperature=0.0) -> str:  # type: ignore[no-untyped-def]
        self.prompts.append(messages[-1]["content"])
        return self.reply(messages[-1]["content"])


def write_graph(store: RecordStore, relations: list[tuple[str, str]], chunks: dict[str, list[str]]) -> None:
    """Store entities, one relation per pair (stated in chunk ``r-<pair>``) and the mentions of ``chunks``."""
    entity_ids = sorted({e for pair in relations for e in pair} | {e for names in chunks.values() for e in names})
    all_chunks = dict(chunks)
    for subject, obj in relations:
        all_chunks.setdefault(f"r-{subject}-{obj}", [subject, obj])
    with store.transaction() as db:
        db.execute(
            "INSERT INTO documents VALUES ('c', 'doc', 'hash', 'Doc', 'text', 'test', NULL, '{}', 0)"
        )
        for position, (chunk_id, names) in enumerate(all_chunks.items()):
            db.execute(
                "INSERT INTO chunks VALUES (?, 'c', 'doc', ?, 0, 10, ?, 5, NULL)",
                (chunk_id, position, "Text that mentions " + ", ".join(names) + "."),
            )
            for offset, entity_id in enumerate(names):
                db.execute("INSERT INTO mentions VALUES (?, ?, ?, ?, ?, ?)",
                           (f"m-{chunk_id}-{entity_id}", entity_id, chunk_id, offset, offset + 1, entity_id))
        db.executemany("INSERT INTO entities VALUES (?, ?, 'CONCEPT')", [(e, e.upper()) for e in entity_ids])
        for subject, obj in relations:
            relation_id = f"rel-{subject}-{obj}"
            db.execute("INSERT INTO relations VALUES (?, ?, 'relates_to', ?)", (relation_id, subject, obj))
            db.execute("INSERT INTO relation_evidence VALUES (?, ?, 0, 10, 'test')", (relation_id, f"r-{subject}-{obj}"))


def clique(names: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(names, 2))


@pytest.fixture()
def two_cluster_store(tmp_path: Path) -> RecordStore:
    """Two 5-entity cliques of relations joined by one relation between a1 and b1."""
    store = RecordStore(tmp_path / "records.sqlite")
    cluster_a = [f"a{i}" for i in range(1, 6)]
    cluster_b = [f"b{i}" for i in range(1, 6)]
    write_graph(store, clique(cluster_a) + clique(cluster_b) + [("a1", "b1")], {})
    yield store
    store.close()


def test_entity_graph_weights(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    write_graph(store, [("x", "y")], {"shared": ["x", "y", "z"]})
    graph = load_entity_graph(store, relation_weight=2.0)
    weights = {
        tuple(sorted((graph.entity_ids[i], graph.entity_ids[j]))): weight
        for (i, j), weight in zip(graph.edges, graph.weights)
    }
    # x-y: relation 2.0, co-mention 1/(3-1) in "shared", co-mention 1/(2-1) in the relation's chunk.
    assert weights[("x", "y")] == pytest.approx(2.0 + 0.5 + 1.0)
    assert weights[("x", "z")] == pytest.approx(0.5)
    assert weights[("y", "z")] == pytest.approx(0.5)
    assert sorted(graph.chunks_of_entity["z"]) == ["shared"]
    store.close()


def test_leiden_two_obvious_clusters(two_cluster_store: RecordStore) -> None:
    graph = load_entity_graph(two_cluster_store)
    communities = detect_communities(graph, Settings(community_split_size=40))
    memberships = sorted(sorted(c.member_ids) for c in communities)
    assert memberships == [["a1", "a2", "a3", "a4", "a5"], ["b1", "b2", "b3", "b4", "b5"]]
    assert all(c.level == 0 and c.parent_id is None for c in communities)
    assert {c.community_id for c in communities} == {
        community_id_for(0, [f"a{i}" for i in range(1, 6)]),
        community_id_for(0, [f"b{i}" for i in range(1, 6)]),
    }


def test_leiden_top_entity_is_bridge(two_cluster_store: RecordStore) -> None:
    graph = load_entity_graph(two_cluster_store)
    communities = {c.member_ids[0][0]: c for c in detect_communities(graph, Settings())}
    # a1 is the only member with a sixth edge, but that edge leaves the community, so
    # inside it all members tie and the order falls back to the entity id.
    assert communities["a"].top_entities == ["a1", "a2", "a3", "a4", "a5"]
    assert len(communities["a"].chunk_ids) == 3


def test_leiden_hierarchy_levels(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    # Two groups, each made of two 4-cliques joined by two relations, and one relation between the groups.
    groups = {
        "p": (["p1", "p2", "p3", "p4"], ["q1", "q2", "q3", "q4"]),
        "r": (["r1", "r2", "r3", "r4"], ["s1", "s2", "s3", "s4"]),
    }
    relations = []
    for left, right in groups.values():
        relations += clique(left) + clique(right) + [(left[0], right[0]), (left[1], right[1])]
    relations.append(("p4", "r4"))
    write_graph(store, relations, {})
    settings = Settings(community_split_size=6, community_min_size=3, community_max_levels=3, community_resolution=0.5)
    communities = detect_communities(load_entity_graph(store), settings)

    top = [c for c in communities if c.level == 0]
    children = [c for c in communities if c.level == 1]
    assert sorted(c.size for c in top) == [8, 8]
    assert sorted(sorted(c.member_ids) for c in children) == [
        ["p1", "p2", "p3", "p4"], ["q1", "q2", "q3", "q4"], ["r1", "r2", "r3", "r4"], ["s1", "s2", "s3", "s4"],
    ]
    parent_of = {c.community_id: c for c in top}
    for child in children:
        assert set(child.member_ids) <= set(parent_of[child.parent_id].member_ids)
    assert not [c for c in communities if c.level >= 2]
    store.close()


def test_leiden_same_seed_same_result(two_cluster_store: RecordStore) -> None:
    graph = load_entity_graph(two_cluster_store)
    first = [c.community_id for c in detect_communities(graph, Settings(community_seed=7))]
    second = [c.community_id for c in detect_communities(graph, Settings(community_seed=7))]
    assert first == second


def test_build_writes_summaries(two_cluster_store: RecordStore) -> None:
    backend = ScriptedBackend(lambda prompt: VALID_SUMMARY)
    encode = lambda texts: np.ones((len(texts), 4), dtype=np.float32) / 2  # noqa: E731
    report = build_communities(two_cluster_store, Settings(), backend, encode)

    assert report.communities == 2
    assert report.summaries_written == 2
    assert report.summaries_failed == []
    assert report.summaries_pending == 0
    stored = CommunityStore(two_cluster_store).list()
    assert [c.title for c in stored] == ["Cluster topic", "Cluster topic"]
    assert all(c.summary_model == "scripted" for c in stored)
    assert all(np.allclose(c.embedding, 0.5) for c in stored)
    assert "Entities:" in backend.prompts[0]
    assert "A1 (CONCEPT)" in backend.prompts[0] or "B1 (CONCEPT)" in backend.prompts[0]
    assert "relates to" in backend.prompts[0]
    assert "Excerpts:" in backend.prompts[0]


def test_build_skips_failed_summary(two_cluster_store: RecordStore) -> None:
    backend = ScriptedBackend(lambda prompt: "no JSON here" if "A1 (CONCEPT)" in prompt else VALID_SUMMARY)
    report = build_communities(two_cluster_store, Settings(), backend)

    failed_id = community_id_for(0, [f"a{i}" for i in range(1, 6)])
    assert report.summaries_failed == [failed_id]
    assert report.summaries_written == 1
    assert report.summaries_pending == 1
    stored = {c.community_id: c for c in CommunityStore(two_cluster_store).list()}
    assert stored[failed_id].summary is None
    assert stored[community_id_for(0, [f"b{i}" for i in range(1, 6)])].summary == "These entities are related."


def test_rebuild_keeps_unchanged_summaries(two_cluster_store: RecordStore) -> None:
    build_communities(two_cluster_store, Settings(), ScriptedBackend(lambda prompt: VALID_SUMMARY))
    calls: list[str] = []
    second = build_communities(two_cluster_store, Settings(), ScriptedBackend(lambda prompt: calls.append(prompt) or VALID_SUMMARY))

    assert second.summaries_kept == 2
    assert second.summaries_written == 0
    assert calls == []
    assert CommunityStore(two_cluster_store).counts() == {"communities": 2, "summarized": 2, "levels": 1}


def test_rebuild_resummarizes_changed_community(two_cluster_store: RecordStore) -> None:
    build_communities(two_cluster_store, Settings(), ScriptedBackend(lambda prompt: VALID_SUMMARY))
    write_graph_extra = [("b5", "b6"), ("b4", "b6"), ("b3", "b6"), ("b2", "b6")]
    with two_cluster_store.transaction() as db:
        db.execute("INSERT INTO entities VALUES ('b6', 'B6', 'CONCEPT')")
        for subject, obj in write_graph_extra:
            db.execute("INSERT INTO relations VALUES (?, ?, 'relates_to', ?)", (f"rel-{subject}-{obj}", subject, obj))
            db.execute("INSERT INTO relation_evidence VALUES (?, 'r-a1-a2', 0, 10, 'test')", (f"rel-{subject}-{obj}",))
    new_title = '{"title": "Grown cluster", "summary": "Now with B6."}'
    report = build_communities(two_cluster_store, Settings(), ScriptedBackend(lambda prompt: new_title))

    assert report.summaries_kept == 1
    assert report.summaries_written == 1
    assert report.removed == 1
    titles = {tuple(c.member_ids): c.title for c in CommunityStore(two_cluster_store).list()}
    assert titles[("b1", "b2", "b3", "b4", "b5", "b6")] == "Grown cluster"
    assert titles[("a1", "a2", "a3", "a4", "a5")] == "Cluster topic"


def test_build_max_summaries_bound(two_cluster_store: RecordStore) -> None:
    backend = ScriptedBackend(lambda prompt: VALID_SUMMARY)
    report = build_communities(two_cluster_store, Settings(), backend, max_summaries=1)

    assert report.summaries_written == 1
    assert report.summaries_pending == 1
    assert len(backend.prompts) == 1
    assert any("--max-summaries" in note for note in report.notes)


def test_build_without_backend_stores_membership(two_cluster_store: RecordStore) -> None:
    report = build_communities(two_cluster_store, Settings(), backend=None)

    assert report.summaries_pending == 2
    stored = CommunityStore(two_cluster_store).list()
    assert sorted(len(c.member_ids) for c in stored) == [5, 5]
    assert all(c.summary is None for c in stored)


def test_summarizer_stops_after_repeated_failures(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    relations = []
    for name in "abcdef":
        relations += clique([f"{name}{i}" for i in range(3)])
    write_graph(store, relations, {})

    def fail(prompt: str) -> str:
        raise LLMError("connection refused")

    backend = ScriptedBackend(fail)
    report = build_communities(store, Settings(), backend)

    assert report.communities == 6
    assert len(report.summaries_failed) == MAX_CONSECUTIVE_FAILURES
    assert len(backend.prompts) == MAX_CONSECUTIVE_FAILURES
    assert report.summaries_pending == 6
    assert any("run the build again" in note for note in report.notes)
    store.close()


@pytest.mark.parametrize(
    "reply",
    [
        '{"title": "Cut off', "", '{"title": "", "summary": ""}', '```json\n{"summary": "no title"}\n```',
        '{"title": "Protein A and cell growth", "summary": "Protein A binds receptor B."}',
    ],
)
def test_summary_rejects_bad_reply(two_cluster_store: RecordStore, reply: str) -> None:
    community = detect_communities(load_entity_graph(two_cluster_store), Settings())[0]
    summarizer = CommunitySummarizer(two_cluster_store, ScriptedBackend(lambda prompt: reply))
    with pytest.raises(LLMError):
        summarizer.summarize(community)


def test_summary_repairs_fenced_truncated_reply(two_cluster_store: RecordStore) -> None:
    community = detect_communities(load_entity_graph(two_cluster_store), Settings())[0]
    reply = '```json\n{"title": "  Five   linked entities ", "summary": "They are all related to each'
    summarizer = CommunitySummarizer(two_cluster_store, ScriptedBackend(lambda prompt: reply))
    assert summarizer.summarize(community) == ("Five linked entities", "They are all related to each")


def test_scripted_backend_is_llm_backend() -> None:
    assert isinstance(ScriptedBackend(lambda prompt: ""), LLMBackend)


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    """Put back the package logger's handlers, which a CLI command points at CliRunner's closed stderr."""
    package_logger = logging.getLogger("expertrag")
    handlers, level, propagate = list(package_logger.handlers), package_logger.level, package_logger.propagate
    yield
    package_logger.handlers[:] = handlers
    package_logger.setLevel(level)
    package_logger.propagate = propagate


def test_cli_list_before_build(tmp_path: Path, sample_kb_path: Path, restore_logging: None) -> None:
    import shutil

    kb_path = tmp_path / "kb"
    shutil.copytree(sample_kb_path, kb_path)
    runner = CliRunner()
    result = runner.invoke(app, ["communities", "list", "--kb", str(kb_path)])
    assert result.exit_code == 0, result.output
    assert "No communities" in result.output

    built = runner.invoke(app, ["communities", "build", "--kb", str(kb_path), "--max-summaries", "0"])
    assert built.exit_code == 0, built.output
    assert "Summaries: 0 written" in built.output

    listed = runner.invoke(app, ["communities", "list", "--kb", str(kb_path), "--level", "0", "--json"])
    assert listed.exit_code == 0, listed.output
    assert '"level": 0' in listed.output
    assert '"summarized": 0' in listed.output


def test_cli_build_missing_kb(tmp_path: Path, restore_logging: None) -> None:
    result = CliRunner().invoke(app, ["communities", "build", "--kb", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "No knowledge base" in result.output
