"""Tests of the REST API against real uvicorn servers on 127.0.0.1.

Three servers run in background threads of the test process: one over the shared sample
knowledge base, one over a folder that does not exist and one over a knowledge base that
was created but never ingested into. Requests go over HTTP with httpx.
"""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from expertrag.api.app import create_app
from expertrag.knowledge_base import KnowledgeBase
from expertrag.sample import SAMPLE_DIR
from expertrag.settings import Settings
from tests.conftest import SAMPLE_COLLECTION

# Seconds to wait for a server's /health to return 200 after its thread starts.
STARTUP_TIMEOUT_S = 30.0
# SciFact claim 36 ("A deficiency of vitamin B12 increases blood levels of homocysteine.").
SAMPLE_QUERY_ID = "36"
# The sample's abstract 11705328 states that 0.8 mg/d of folic acid gives the maximum reduction.
ANSWERABLE_QUESTION = "What daily dose of folic acid gives the maximum reduction in serum homocysteine?"


def load_sample_query(query_id: str) -> tuple[str, set[str]]:
    """Return the text of a sample query and the ids of its relevant documents from the qrels."""
    queries = {}
    with (SAMPLE_DIR / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            queries[record["_id"]] = record["text"]
    with (SAMPLE_DIR / "qrels" / "test.tsv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    relevant = {row["corpus-id"] for row in rows if row["query-id"] == query_id and int(row["score"]) > 0}
    return queries[query_id], relevant


@contextlib.contextmanager
def running_server(kb_path: Path, settings: Settings) -> Iterator[str]:
    """Serve ``create_app(kb_path)`` with uvicorn in a thread and yield its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(create_app(kb_path, settings), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # Handing uvicorn the bound socket avoids the race of picking a free port and binding it later.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base_url, thread)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
        assert not thread.is_alive(), f"uvicorn server on port {port} did not stop within 10 s"


def wait_for_health(base_url: str, thread: threading.Thread) -> None:
    """Poll GET /health until it returns 200. Fail when the server thread exits or the timeout passes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            pytest.fail(f"uvicorn server thread for {base_url} exited during startup")
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError as error:
            last_error = error
        time.sleep(0.1)
    pytest.fail(f"GET {base_url}/health did not return 200 within {STARTUP_TIMEOUT_S} s (last error: {last_error})")


@pytest.fixture(scope="module")
def sample_client(sample_kb_path: Path, settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client of a server over the shared sample knowledge base."""
    with running_server(sample_kb_path, settings) as base_url:
        # A generous read timeout, because /query loads and runs the local LLM on CPU.
        with httpx.Client(base_url=base_url, timeout=httpx.Timeout(10.0, read=600.0)) as client:
            yield client


@pytest.fixture(scope="module")
def missing_kb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A path inside a fresh temporary folder where no knowledge base exists."""
    return tmp_path_factory.mktemp("api_missing") / "kb"


@pytest.fixture(scope="module")
def missing_client(missing_kb_path: Path, settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client of a server over a knowledge base folder that does not exist."""
    with running_server(missing_kb_path, settings) as base_url:
        with httpx.Client(base_url=base_url, timeout=30.0) as client:
            yield client


@pytest.fixture(scope="module")
def empty_client(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client of a server over a knowledge base that has no collection yet."""
    path = tmp_path_factory.mktemp("api_empty") / "kb"
    KnowledgeBase.open(path, settings, create=True).close()
    with running_server(path, settings) as base_url:
        with httpx.Client(base_url=base_url, timeout=30.0) as client:
            yield client


# GET /health


def test_health_reports_sample_counts(sample_client: httpx.Client, sample_kb: KnowledgeBase, sample_kb_path: Path) -> None:
    response = sample_client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["knowledge_base"] == str(sample_kb_path)
    assert body["collections"] == sample_kb.stats()["collections"]
    assert body["collections"][SAMPLE_COLLECTION]["documents"] == 100


# POST /retrieve


def test_retrieve_finds_relevant_document(sample_client: httpx.Client, sample_kb: KnowledgeBase) -> None:
    query, relevant = load_sample_query(SAMPLE_QUERY_ID)
    assert relevant, f"the sample qrels list no relevant document for query {SAMPLE_QUERY_ID}"

    response = sample_client.post("/retrieve", json={"query": query, "k": 10})

    assert response.status_code == 200
    hits = response.json()["hits"]
    assert len(hits) == 10
    assert relevant & {hit["doc_id"] for hit in hits}
    assert hits[0]["doc_id"] in relevant

    expected = sample_kb.retrieve(query, k=10)
    assert [hit["chunk_id"] for hit in hits] == [hit.chunk_id for hit in expected]
    assert [hit["score"] for hit in hits] == pytest.approx([hit.score for hit in expected])


def test_retrieve_hit_text_is_document_slice(sample_client: httpx.Client, sample_kb: KnowledgeBase) -> None:
    query, _ = load_sample_query(SAMPLE_QUERY_ID)

    hits = sample_client.post("/retrieve", json={"query": query, "k": 10}).json()["hits"]

    assert hits
    for hit in hits:
        assert hit["collection"] == SAMPLE_COLLECTION
        document_text = sample_kb.store.document_text(hit["collection"], hit["doc_id"])
        assert document_text is not None, f"document {hit['doc_id']} of hit {hit['chunk_id']} is not stored"
        assert 0 <= hit["start"] < hit["end"] <= len(document_text)
        assert hit["text"] == document_text[hit["start"] : hit["end"]]
        assert hit["title"] == sample_kb.chunk(hit["chunk_id"])["title"]


def test_retrieve_hybrid_scores_fuse_ranks(sample_client: httpx.Client, settings: Settings) -> None:
    query, _ = load_sample_query(SAMPLE_QUERY_ID)

    hits = sample_client.post("/retrieve", json={"query": query, "k": 10, "retriever": "hybrid"}).json()["hits"]

    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    for hit in hits:
        assert hit["ranks"], f"hit {hit['chunk_id']} has no retriever rank"
        assert set(hit["ranks"]) <= {"dense", "bm25"}
        assert all(rank >= 1 for rank in hit["ranks"].values())
        fused = sum(1.0 / (settings.rrf_k + rank) for rank in hit["ranks"].values())
        assert hit["score"] == pytest.approx(fused)


@pytest.mark.parametrize("retriever", ["dense", "bm25"])
def test_retrieve_single_retriever_ranks(sample_client: httpx.Client, retriever: str) -> None:
    query, _ = load_sample_query(SAMPLE_QUERY_ID)

    response = sample_client.post("/retrieve", json={"query": query, "k": 5, "retriever": retriever})

    assert response.status_code == 200
    hits = response.json()["hits"]
    assert len(hits) == 5
    assert [hit["ranks"] for hit in hits] == [{retriever: rank} for rank in range(1, 6)]
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)


def test_retrieve_graph_returns_links_and_paths(sample_client: httpx.Client, sample_kb: KnowledgeBase) -> None:
    response = sample_client.post("/retrieve", json={"query": "Does ADAR1 form a complex with Dicer?", "k": 5,
                                                    "retriever": "graph"})

    assert response.status_code == 200
    body = response.json()
    assert "adar1" in {link["text"].lower() for link in body["links"]}
    assert body["notes"] == []
    assert body["paths"], "ADAR1 and Dicer are joined by an extracted relation in the sample"
    for step in body["paths"][0]["steps"]:
        assert sample_kb.chunk(step["chunk_id"]) is not None
    assert all(set(hit["ranks"]) <= {"dense", "graph"} for hit in body["hits"])


def test_retrieve_graph_without_link_says_fallback(sample_client: httpx.Client) -> None:
    response = sample_client.post("/retrieve", json={"query": "what is it about", "k": 3, "retriever": "graph"})

    assert response.status_code == 200
    body = response.json()
    assert body["links"] == []
    assert len(body["notes"]) == 1
    assert "fell back to dense retrieval" in body["notes"][0]


# POST /query


@pytest.mark.llm
def test_query_cites_document_text(sample_client: httpx.Client, sample_kb: KnowledgeBase) -> None:
    response = sample_client.post("/query", json={"question": ANSWERABLE_QUESTION})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["found"] is True, f"no answer found; notes: {body['notes']}"
    assert "0.8" in body["answer"]
    assert body["citations"]
    hit_ids = {hit["chunk_id"] for hit in body["hits"]}
    for citation in body["citations"]:
        assert citation["chunk_id"] in hit_ids
        assert 1 <= citation["number"] <= len(body["hits"])
        assert body["hits"][citation["number"] - 1]["chunk_id"] == citation["chunk_id"]

        document_text = sample_kb.store.document_text(citation["collection"], citation["doc_id"])
        assert document_text is not None
        assert citation["quote"] == document_text[citation["start"] : citation["end"]]
        assert citation["quote"].strip()

        chunk = sample_kb.chunk(citation["chunk_id"])
        assert chunk is not None
        assert chunk["doc_id"] == citation["doc_id"]
        assert chunk["start"] <= citation["start"] < citation["end"] <= chunk["end"]


# Request validation

INVALID_REQUESTS = [
    ("/query", {"question": ""}, "question"),
    ("/query", {}, "question"),
    ("/query", {"question": "What is homocysteine?", "k": 0}, "k"),
    ("/query", {"question": "What is homocysteine?", "k": 51}, "k"),
    ("/query", {"question": "What is homocysteine?", "retriever": "fuzzy"}, "retriever"),
    ("/retrieve", {"query": ""}, "query"),
    ("/retrieve", {"query": "homocysteine", "k": 0}, "k"),
    ("/retrieve", {"query": "homocysteine", "retriever": "fuzzy"}, "retriever"),
]


@pytest.mark.parametrize(("path", "body", "field"), INVALID_REQUESTS)
def test_invalid_request_returns_422(sample_client: httpx.Client, path: str, body: dict, field: str) -> None:
    response = sample_client.post(path, json=body)

    assert response.status_code == 422
    locations = [error["loc"] for error in response.json()["detail"]]
    assert ["body", field] in locations


@pytest.mark.parametrize(("path", "field"), [("/query", "question"), ("/retrieve", "query")])
def test_blank_text_returns_422(sample_client: httpx.Client, path: str, field: str) -> None:
    response = sample_client.post(path, json={field: "   "})

    assert response.status_code == 422
    assert "empty" in response.json()["detail"]


# Errors of the knowledge base


@pytest.mark.parametrize(("path", "body"), [("/retrieve", {"query": "homocysteine"}), ("/query", {"question": "What is homocysteine?"})])
def test_unknown_collection_returns_404(sample_client: httpx.Client, path: str, body: dict) -> None:
    response = sample_client.post(path, json={**body, "collection": "no-such-collection"})

    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "no-such-collection" in detail
    assert SAMPLE_COLLECTION in detail


def test_missing_kb_health_says_missing(missing_client: httpx.Client, missing_kb_path: Path) -> None:
    response = missing_client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "missing", "knowledge_base": str(missing_kb_path), "collections": {}}
    assert not missing_kb_path.exists()


@pytest.mark.parametrize(("path", "body"), [("/query", {"question": "What is homocysteine?"}), ("/retrieve", {"query": "homocysteine"})])
def test_missing_kb_returns_404(missing_client: httpx.Client, missing_kb_path: Path, path: str, body: dict) -> None:
    response = missing_client.post(path, json=body)

    assert response.status_code == 404
    detail = response.json()["detail"]
    assert str(missing_kb_path) in detail
    assert "expertrag ingest" in detail
    assert not missing_kb_path.exists()


def test_empty_kb_health_says_empty(empty_client: httpx.Client) -> None:
    response = empty_client.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "empty"
    assert response.json()["collections"] == {}


@pytest.mark.parametrize(("path", "body"), [("/query", {"question": "What is homocysteine?"}), ("/retrieve", {"query": "homocysteine"})])
def test_empty_kb_returns_409(empty_client: httpx.Client, path: str, body: dict) -> None:
    response = empty_client.post(path, json=body)

    assert response.status_code == 409
    assert "ingest" in response.json()["detail"]


# GET /entities/{entity_id}


def test_entity_returns_its_facts(sample_client: httpx.Client, sample_kb: KnowledgeBase) -> None:
    rows = list(sample_kb.store.iter_table(
        "SELECT subject_id, COUNT(*) FROM relations GROUP BY subject_id ORDER BY COUNT(*) DESC, subject_id LIMIT 1"
    ))
    assert rows, "the sample knowledge base has no relation"
    entity_id = rows[0][0]
    entity = sample_kb.store.get_entity(entity_id)

    response = sample_client.get(f"/entities/{entity_id}")

    assert response.status_code == 200
    body = response.json()
    assert body["entity_id"] == entity_id
    assert body["name"] == entity.name
    assert body["label"] == entity.label
    assert body["facts"]
    for fact in body["facts"]:
        assert entity_id in (fact["subject_id"], fact["object_id"])
    expected = [fact.relation_id for fact in sample_kb.store.facts_about([entity_id])]
    assert [fact["relation_id"] for fact in body["facts"]] == expected


def test_unknown_entity_returns_404(sample_client: httpx.Client) -> None:
    response = sample_client.get("/entities/no-such-entity")

    assert response.status_code == 404
    assert "no-such-entity" in response.json()["detail"]


# GET /openapi.json


def test_openapi_lists_endpoints(sample_client: httpx.Client) -> None:
    response = sample_client.get("/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "post" in paths["/query"]
    assert "post" in paths["/retrieve"]
    assert "get" in paths["/health"]
    assert "get" in paths["/entities/{entity_id}"]
