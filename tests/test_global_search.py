"""Tests of global search (map-reduce over community summaries) and of LLM servers that fail.

Map and reduce cases use a scripted backend with exact replies. The end-to-end test
builds communities of the bundled SciFact sample and answers with the real local GGUF
model. Servers that are down, slow, drip their body or return garbage are real HTTP
servers started here on 127.0.0.1, called through the OpenAI-compatible backend.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from expertrag.errors import LLMError
from expertrag.kg_build.community_store import CommunityStore
from expertrag.knowledge_base import KnowledgeBase
from expertrag.rag.answerer import Answerer
from expertrag.rag.communities import build_communities
from expertrag.rag.global_search import GlobalSearch
from expertrag.rag.llm import LlamaCppBackend, OpenAICompatibleBackend
from expertrag.rag.pike import PikeAnswerer
from expertrag.settings import Settings
from tests.conftest import SAMPLE_COLLECTION
from tests.test_llm import default_gguf, llama_server_url  # noqa: F401  (fixtures shared with the backend tests)


class ScriptedBackend:
    """An LLMBackend that returns its replies in order, raising those that are exceptions."""

    name = "scripted"

    def __init__(self, *replies: str | Exception) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []

    def complete(self, messages, *, max_tokens=None, json_schema=None, temperature=0.0) -> str:  # type: ignore[no-untyped-def]
        self.prompts.append(messages[-1]["content"])
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


@pytest.fixture()
def community_kb(sample_kb_path: Path, settings: Settings, tmp_path: Path) -> Iterator[KnowledgeBase]:
    """A copy of the sample KB with three communities summarized by a scripted backend."""
    path = tmp_path / "kb"
    shutil.copytree(sample_kb_path, path)
    kb = KnowledgeBase.open(path, settings)
    titles = iter(["ADAR1 and Dicer", "Open access citations", "Malaria in children"])
    summaries = {
        "ADAR1 and Dicer": "ADAR1 forms a complex with Dicer that promotes RNA interference.",
        "Open access citations": "Open access articles are cited more often than other articles.",
        "Malaria in children": "Alpha-thalassaemia protects children against severe malaria anaemia.",
    }

    class Summaries:
        name = "scripted"

        def complete(self, messages, **options) -> str:  # type: ignore[no-untyped-def]
            title = next(titles)
            return json.dumps({"title": title, "summary": summaries[title]})

    build_communities(kb.store, kb.settings, Summaries(), kb.encoder.encode, max_summaries=3)
    yield kb
    kb.close()


def global_search(kb: KnowledgeBase, backend: object, **settings: object) -> GlobalSearch:
    options = {"global_max_communities": 2, "global_reduce_answers": 2, **settings}
    return GlobalSearch(kb.store, backend, kb.encoder.encode, kb.settings.model_copy(update=options))  # type: ignore[arg-type]


def test_select_by_summary_similarity(community_kb: KnowledgeBase) -> None:
    search = global_search(community_kb, ScriptedBackend())
    selected = search.select("Which protein forms a complex with ADAR1 in RNA interference?")

    assert len(selected) == 2
    assert selected[0][0].title == "ADAR1 and Dicer"
    assert selected[0][1] > selected[1][1]


def test_global_answer_cites_community_chunks(community_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend(
        '{"answer": "ADAR1 forms a complex with Dicer.", "score": 90}',
        '{"answer": "NOT_FOUND", "score": 0}',
        '{"answer": "ADAR1 forms a complex with Dicer, which promotes RNA interference.", "citations": [1]}',
    )
    result = global_search(community_kb, backend).answer("What does ADAR1 form a complex with?")

    assert result.found
    assert result.answer == "ADAR1 forms a complex with Dicer, which promotes RNA interference."
    used = [c for c in result.communities if c["used"]]
    assert [c["title"] for c in used] == ["ADAR1 and Dicer"]
    assert used[0]["score"] == 90
    assert [c["score"] for c in result.communities if not c["used"]] == [0]
    stored = CommunityStore(community_kb.store).get(used[0]["community_id"])
    assert used[0]["chunk_ids"] == stored.chunk_ids
    assert [hit.chunk_id for hit in result.hits] == stored.chunk_ids
    assert [c.number for c in result.citations] == list(range(1, len(stored.chunk_ids) + 1))
    for citation in result.citations:
        document = community_kb.store.document_text(citation.collection, citation.doc_id)
        assert document[citation.start:citation.end] == citation.quote
    assert "[1] (ADAR1 and Dicer) ADAR1 forms a complex with Dicer." in backend.prompts[2]


def test_global_map_failure_skipped(community_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend(
        "<html>proxy error</html>",
        '{"answer": "Dicer", "score": 40}',
        '{"answer": "ADAR1 binds Dicer.", "citations": [1]}',
    )
    result = global_search(community_kb, backend).answer("What does ADAR1 form a complex with?")

    assert result.found
    assert len(result.communities) == 1
    assert any("skipped: the map call failed" in note for note in result.notes)


def test_global_all_map_calls_fail(community_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend(LLMError("connection refused"), LLMError("connection refused"))
    with pytest.raises(LLMError, match="All 2 map calls of the global search failed"):
        global_search(community_kb, backend).answer("What does ADAR1 form a complex with?")


def test_global_reduce_failure_degrades(community_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend(
        '{"answer": "ADAR1 forms a complex with Dicer.", "score": 80}',
        '{"answer": "Thalassaemia protects children.", "score": 10}',
        '{"answer": "cut off',
    )
    result = global_search(community_kb, backend).answer("What does ADAR1 form a complex with?")

    assert result.found
    assert result.answer == "ADAR1 forms a complex with Dicer."
    assert any("the reduce step failed" in note for note in result.notes)
    assert [c["title"] for c in result.communities if c["used"]] == ["ADAR1 and Dicer"]


def test_global_no_helpful_summary(community_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend('{"answer": "NOT_FOUND", "score": 0}', '{"answer": "unrelated", "score": 0}')
    result = global_search(community_kb, backend).answer("Who won the 1994 World Cup?")

    assert not result.found
    assert result.citations == []
    assert any("none of the 2 community summaries helps" in note for note in result.notes)
    assert len(backend.prompts) == 2


def test_global_without_communities(sample_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend()
    result = GlobalSearch(sample_kb.store, backend, sample_kb.encoder.encode, sample_kb.settings).answer("Anything?")

    assert not result.found
    assert result.notes == ["no communities are stored; run `expertrag communities build` first"]
    assert backend.prompts == []


def test_global_unknown_collection(community_kb: KnowledgeBase) -> None:
    from expertrag.errors import CollectionNotFoundError

    with pytest.raises(CollectionNotFoundError, match="nope"):
        community_kb.answer_in_mode("What does ADAR1 do?", "global", collection="nope")


def test_global_collection_filter(community_kb: KnowledgeBase) -> None:
    search = global_search(community_kb, ScriptedBackend())
    assert search.select("ADAR1", collection=SAMPLE_COLLECTION)
    assert search.select("ADAR1", collection="other-collection") == []


def test_invalid_mode(sample_kb: KnowledgeBase) -> None:
    from expertrag.errors import InputError

    with pytest.raises(InputError, match="Invalid answer mode 'drift'"):
        sample_kb.answer_in_mode("What does ADAR1 do?", "drift")  # type: ignore[arg-type]


@pytest.mark.llm
@pytest.mark.slow
def test_global_end_to_end_local_model(sample_kb_path: Path, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "kb"
    shutil.copytree(sample_kb_path, path)
    # Two summaries (a reply can be rejected, for example one that copies the prompt's
    # example), one map call and one reduce call keep the run to four LLM calls.
    options = {"global_max_communities": 1, "global_reduce_answers": 1}
    with KnowledgeBase.open(path, settings.model_copy(update=options)) as kb:
        report = build_communities(kb.store, kb.settings, kb.answerer().backend, kb.encoder.encode, max_summaries=2)
        assert report.summaries_written + len(report.summaries_failed) == 2
        assert report.summaries_written >= 1
        summarized = CommunityStore(kb.store).list(summarized_only=True)
        question = f"What do the studies report about {summarized[0].title}?"

        result = kb.answer(question, mode="global")

        assert len(result.communities) == 1
        for entry in result.communities:
            assert 0 <= entry["score"] <= 100
        assert result.found == bool(result.citations)
        for citation in result.citations:
            chunk = kb.chunk(citation.chunk_id)
            assert chunk is not None
            document = kb.store.document_text(citation.collection, citation.doc_id)
            assert document[citation.start:citation.end] == citation.quote
        assert result.to_dict()["sub_questions"] == []


# --------------------------------------------------------------------------- failing LLM servers


class _FailingHandler(http.server.BaseHTTPRequestHandler):
    """``/garbage``: HTML with status 200. ``/slow``: a valid reply after 3 s. ``/drip``: a valid
    reply whose body arrives one byte every 0.1 s."""

    def do_POST(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        mode = self.path.strip("/").split("/")[0]
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": '{"answer": "x", "score": 5}'}}]})
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if mode == "garbage":
                self._head(200, 32, "text/html")
                self.wfile.write(b"<html>upstream proxy error</html>"[:32])
            elif mode == "slow":
                time.sleep(3.0)
                self._head(200, len(body))
                self.wfile.write(body.encode())
            elif mode == "drip":
                self._head(200, len(body))
                for byte in body.encode():
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)

    def _head(self, status: int, length: int, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        pass


@pytest.fixture(scope="module")
def failing_server() -> Iterator[str]:
    """Start the failing HTTP server on a free 127.0.0.1 port and return its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _backend(url: str, timeout_s: float = 1.0) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(Settings(llm_backend="openai", llm_base_url=url, llm_timeout_s=timeout_s, llm_retries=0))


def test_global_garbage_server_error(community_kb: KnowledgeBase, failing_server: str) -> None:
    search = global_search(community_kb, _backend(f"{failing_server}/garbage/v1"))
    with pytest.raises(LLMError, match="All 2 map calls") as raised:
        search.answer("What does ADAR1 form a complex with?")
    assert "not JSON" in str(raised.value)


def test_global_slow_server_times_out(community_kb: KnowledgeBase, failing_server: str) -> None:
    search = global_search(community_kb, _backend(f"{failing_server}/slow/v1", timeout_s=0.5))
    with pytest.raises(LLMError, match="timed out"):
        search.answer("What does ADAR1 form a complex with?")


def test_openai_dripping_body_times_out(failing_server: str) -> None:
    backend = _backend(f"{failing_server}/drip/v1", timeout_s=1.0)
    with pytest.raises(LLMError, match="timed out"):
        backend.complete([{"role": "user", "content": "hi"}])


def test_pike_down_server_error(sample_kb: KnowledgeBase) -> None:
    backend = _backend(_closed_port_url())
    pike = PikeAnswerer(Answerer(backend), lambda question, k: sample_kb.retrieve(question, SAMPLE_COLLECTION, k, "dense"))
    with pytest.raises(LLMError, match="sub-questions failed in the LLM") as raised:
        pike.answer("Who is the spouse of the director of Alien?", k=2)
    assert "Cannot reach the LLM server" in str(raised.value)


@pytest.mark.llm
def test_llama_cpp_generation_timeout(default_gguf: Path) -> None:  # noqa: F811 (fixture imported above)
    backend = LlamaCppBackend(Settings(llm_context_tokens=1024, llm_local_timeout_s=0.05), model_path=default_gguf)
    try:
        with pytest.raises(LLMError, match="timed out"):
            backend.complete([{"role": "user", "content": "Count from one to one hundred in words."}], max_tokens=200)
    finally:
        backend.close()


@pytest.mark.llm
def test_decompose_through_llama_server(llama_server_url: str) -> None:  # noqa: F811 (fixture imported above)
    from expertrag.rag.decompose import Decomposer

    backend = OpenAICompatibleBackend(Settings(llm_base_url=llama_server_url, llm_timeout_s=120.0, llm_retries=0))
    result = Decomposer(backend).decompose("What is the capital of the country where Ada Lovelace was born?")

    assert result.method in ("llm", "rules")
    assert 1 <= len(result.sub_questions) <= 4
    assert all(question.endswith("?") for question in result.sub_questions)
    if result.method == "rules":
        assert result.sub_questions == ["Where was Ada Lovelace born?", "What is the capital of #1?"]


def test_api_query_global_mode(sample_kb_path: Path, settings: Settings, tmp_path: Path) -> None:
    import httpx

    from tests.test_api import running_server

    path = tmp_path / "kb"
    shutil.copytree(sample_kb_path, path)
    with running_server(path, settings) as base_url, httpx.Client(base_url=base_url, timeout=120, trust_env=False) as client:
        response = client.post("/query", json={"question": "What do the studies report?", "mode": "global"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["found"] is False
        assert body["notes"] == ["no communities are stored; run `expertrag communities build` first"]
        assert body["communities"] == []
        assert body["sub_questions"] == []

        invalid = client.post("/query", json={"question": "What?", "mode": "drift"})
        assert invalid.status_code == 422
        assert "mode" in invalid.text


def test_relaxed_schema_drops_bounds() -> None:
    from expertrag.rag.output_schemas import CITED_ANSWER_SCHEMA, MAP_SCHEMA, relaxed

    loose = relaxed(CITED_ANSWER_SCHEMA)
    assert "maxItems" not in json.dumps(loose)
    assert CITED_ANSWER_SCHEMA["properties"]["citations"]["maxItems"] == 8
    assert list(CITED_ANSWER_SCHEMA["properties"]) == ["citations", "answer"]
    assert relaxed(MAP_SCHEMA)["properties"]["score"] == {"type": "integer", "minimum": 0, "maximum": 100}
    assert list(MAP_SCHEMA["properties"]) == ["score", "answer"]
