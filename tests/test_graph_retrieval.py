"""Personalized PageRank, entity linking, relation paths and graph retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from expertrag.errors import InputError
from expertrag.knowledge_base import KnowledgeBase
from expertrag.retrievers.entity_linking import EntityLinker
from expertrag.retrievers.graph_index import GraphIndex, RelationEdge, title_keys
from expertrag.retrievers.graph_retriever import NO_LINK_NOTE
from expertrag.retrievers.paths import PathFinder
from expertrag.retrievers.ppr import personalized_pagerank, transition_matrix
from tests.conftest import SAMPLE_COLLECTION


def test_ppr_path_graph_by_hand() -> None:
    # Undirected path a - b - c seeded at a with damping 0.5; solving the three balance
    # equations by hand gives a = 7/12, b = 4/12, c = 1/12.
    adjacency = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float))
    transition, dangling = transition_matrix(adjacency)
    scores = personalized_pagerank(transition, dangling, np.array([1.0, 0, 0]), damping=0.5, tolerance=1e-13)
    assert scores == pytest.approx([7 / 12, 4 / 12, 1 / 12], abs=1e-9)


def test_ppr_dangling_node_by_hand() -> None:
    # a -> b and b has no out-edge: b's mass returns to the seed a, so a = 2/3 and b = 1/3.
    adjacency = sp.csr_matrix(np.array([[0, 1], [0, 0]], dtype=float))
    transition, dangling = transition_matrix(adjacency)
    assert dangling.tolist() == [False, True]
    scores = personalized_pagerank(transition, dangling, np.array([1.0, 0.0]), damping=0.5, tolerance=1e-13)
    assert scores == pytest.approx([2 / 3, 1 / 3], abs=1e-9)


def test_ppr_matches_igraph() -> None:
    import igraph

    rng = np.random.default_rng(7)
    n, m = 300, 1500
    sources, targets, weights = rng.integers(0, n, m), rng.integers(0, n, m), rng.random(m) + 0.1
    adjacency = sp.csr_matrix(sp.coo_matrix((weights, (sources, targets)), shape=(n, n)))
    reset = np.zeros(n)
    reset[[5, 17, 200]] = [1.0, 2.0, 0.5]
    transition, dangling = transition_matrix(adjacency)
    ours = personalized_pagerank(transition, dangling, reset, damping=0.5, tolerance=1e-12)
    graph = igraph.Graph(n=n, edges=list(zip(sources.tolist(), targets.tolist())), directed=True)
    theirs = graph.personalized_pagerank(damping=0.5, reset=reset.tolist(), weights=weights.tolist(), directed=True)
    assert np.abs(ours - np.array(theirs)).max() < 1e-9
    assert ours.sum() == pytest.approx(1.0)


def test_ppr_batch_equals_single_runs() -> None:
    adjacency = sp.random(50, 50, density=0.1, random_state=3, format="csr")
    transition, dangling = transition_matrix(adjacency)
    seeds = np.eye(50)[:, [0, 9, 33]]
    batch = personalized_pagerank(transition, dangling, seeds)
    for column, node in enumerate([0, 9, 33]):
        single = personalized_pagerank(transition, dangling, np.eye(50)[node])
        assert batch[:, column] == pytest.approx(single, abs=1e-12)


def test_ppr_rejects_bad_input() -> None:
    transition, dangling = transition_matrix(sp.csr_matrix(np.ones((2, 2))))
    with pytest.raises(InputError, match="all zeros"):
        personalized_pagerank(transition, dangling, np.zeros(2))
    with pytest.raises(InputError, match="2 nodes"):
        personalized_pagerank(transition, dangling, np.ones(3))
    with pytest.raises(InputError, match="damping"):
        personalized_pagerank(transition, dangling, np.ones(2), damping=1.0)
    with pytest.raises(InputError, match="negative"):
        transition_matrix(sp.csr_matrix(np.array([[0, -1.0], [1.0, 0]])))


def hand_made_graph() -> GraphIndex:
    """Four chunks; entities Marie Curie, Warsaw, Sorbonne, Pierre Curie and a generic "city"."""
    chunk_ids = ["c0", "c1", "c2", "c3"]
    entity_ids = ["curie", "warsaw", "sorbonne", "pierre", "city"]
    names = ["Marie Curie", "Warsaw", "University of Paris", "Pierre Curie", "city"]
    mentions = [(0, 0), (0, 1), (1, 0), (1, 2), (2, 3), (2, 2), (0, 4), (1, 4), (2, 4), (3, 4)]
    n = len(chunk_ids) + len(entity_ids)
    rows = [c for c, e in mentions] + [4 + e for c, e in mentions]
    cols = [4 + e for c, e in mentions] + [c for c, e in mentions]
    adjacency = sp.csr_matrix(sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)))
    return GraphIndex(
        collection="toy",
        fingerprint="toy:1",
        chunk_ids=chunk_ids,
        entity_ids=entity_ids,
        entity_names=names,
        entity_labels=["PERSON", "GPE", "ORG", "PERSON", "CONCEPT"],
        entity_chunk_counts=np.array([2, 1, 2, 1, 4]),
        adjacency=adjacency,
        aliases={"marie curie": [0], "curie": [0, 3], "maria sklodowska": [0], "warsaw": [1],
                 "university of paris": [2], "sorbonne": [2], "pierre curie": [3], "city": [4]},
        titles={"warsaw": [3], "warsaw uprising": [3]},
        relations=[RelationEdge("r0", 0, "born_in", 1), RelationEdge("r1", 0, "work_at", 2),
                   RelationEdge("r2", 3, "work_at", 2)],
    )


def test_linking_exact_alias_and_title() -> None:
    linker = EntityLinker(hand_made_graph(), max_chunk_fraction=0.5)
    links = linker.link("Where did Maria Sklodowska study before the Sorbonne in a city?")
    found = {(link.text, link.method, link.entity_id) for link in links}
    assert ("Maria Sklodowska", "alias", "curie") in found
    assert ("Sorbonne", "alias", "sorbonne") in found
    # "city" is in all four chunks, more than half of them, so it is too generic to link.
    assert all(link.entity_id != "city" for link in links)


def test_linking_prefers_longest_span() -> None:
    linker = EntityLinker(hand_made_graph(), max_chunk_fraction=0.5)
    links = linker.link("Who married Marie Curie?")
    assert [(link.text, link.entity_id) for link in links] == [("Marie Curie", "curie")]
    assert links[0].method == "exact"
    assert (links[0].start, links[0].end) == (12, 23)


def test_linking_titles_and_stop_words() -> None:
    linker = EntityLinker(hand_made_graph(), max_chunk_fraction=0.5)
    links = linker.link("When was the Warsaw Uprising?")
    assert [(link.method, link.chunk_ids) for link in links] == [("title", ("c3",))]
    assert linker.link("What is it and where is it?") == []


def test_linking_by_embedding_threshold() -> None:
    graph = hand_made_graph()
    names = np.eye(5, dtype=np.float32)

    def encode(texts: list[str]) -> np.ndarray:
        # "Paris university" points mostly at entity 2; "somewhere" at nothing in particular.
        vectors = {"Paris university": [0, 0, 0.95, 0.31, 0], "somewhere": [0.5, 0.5, 0.5, 0.5, 0]}
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    def phrases(query: str) -> list[tuple[int, int]]:
        return [(query.index(p), query.index(p) + len(p)) for p in ("Paris university", "somewhere")]

    linker = EntityLinker(graph, encode=encode, name_vectors=lambda: names, phrases=phrases,
                          threshold=0.8, max_chunk_fraction=0.5)
    links = linker.link("Did she teach at Paris university or somewhere?")
    assert [(link.text, link.method, link.entity_id) for link in links] == [("Paris university", "embedding", "sorbonne")]
    assert links[0].score == pytest.approx(0.95)


def test_shortest_path_between_entities() -> None:
    graph = hand_made_graph()
    finder = PathFinder(graph)
    assert finder.shortest_path(1, 3) == [0, 1, 2]
    assert finder.shortest_path(1, 3, max_hops=2) is None
    assert finder.shortest_path(0, 4) is None
    assert finder.shortest_path(2, 2) == []


def test_title_keys_drop_qualifier() -> None:
    assert title_keys("Black Book (film)") == ["black book film", "black book"]
    assert title_keys("Warsaw") == ["warsaw"]


def test_graph_retrieval_links_and_ranks(sample_kb: KnowledgeBase) -> None:
    retrieval = sample_kb.retrieval("Which protein does ADAR1 bind with Dicer?", SAMPLE_COLLECTION, k=5, retriever="graph")
    linked = {link.text.lower() for link in retrieval.links}
    assert "adar1" in linked
    assert retrieval.notes == []
    assert retrieval.hits[0].doc_id == "5953485"
    assert [h.score for h in retrieval.hits] == sorted((h.score for h in retrieval.hits), reverse=True)
    assert all(set(h.ranks) <= {"dense", "graph"} for h in retrieval.hits)


def test_graph_paths_carry_evidence(sample_kb: KnowledgeBase) -> None:
    retrieval = sample_kb.retrieval("Does ADAR1 form a complex with Dicer?", SAMPLE_COLLECTION, k=5, retriever="graph")
    assert retrieval.paths, "ADAR1 and Dicer are joined by an extracted relation in the sample"
    for path in retrieval.paths:
        for step in path.steps:
            chunk = sample_kb.chunk(step.chunk_id)
            assert chunk is not None
            document = sample_kb.store.document_text(SAMPLE_COLLECTION, chunk["doc_id"])
            assert document is not None and chunk["start"] <= step.start < step.end <= chunk["end"]


def test_graph_retrieval_without_links_falls_back(sample_kb: KnowledgeBase) -> None:
    retrieval = sample_kb.retrieval("what is it about", SAMPLE_COLLECTION, k=5, retriever="graph")
    dense = sample_kb.retrieve("what is it about", SAMPLE_COLLECTION, k=5, retriever="dense")
    assert retrieval.notes == [NO_LINK_NOTE]
    assert [h.chunk_id for h in retrieval.hits] == [h.chunk_id for h in dense]


def test_synonym_edges_join_close_names(sample_kb: KnowledgeBase, tmp_path) -> None:
    from expertrag.retrievers.graph_retriever import GraphRetriever

    settings = sample_kb.settings.model_copy(update={"graph_synonym_edges": True, "graph_synonym_threshold": 0.9})
    retriever = GraphRetriever(sample_kb.store, SAMPLE_COLLECTION, tmp_path, sample_kb.encoder.encode, settings)
    fingerprint = sample_kb.searcher(SAMPLE_COLLECTION).current_fingerprint()
    graph = retriever.graph(fingerprint)
    rows, cols, weights = retriever._synonym_edges(graph)

    assert len(rows) > 0
    assert (rows < cols).all()
    assert (weights >= 0.9).all()
    vectors = retriever.name_vectors()
    cosines = np.einsum("ij,ij->i", vectors[rows], vectors[cols])
    assert cosines == pytest.approx(weights, abs=1e-4)
    # The cached name vectors are reused: a second call reads the file written by the first.
    assert (tmp_path / f"{SAMPLE_COLLECTION}.entity_names.npz").is_file()
    retriever._name_vectors = None
    assert np.array_equal(retriever.name_vectors(), vectors)
