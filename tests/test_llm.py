"""Tests of the LLM backends, the GGUF assembly and the JSON output parser.

The GGUF tests assemble the real default model (about 0.5 GB) into ``Settings().cache_dir``
once per session. The llama-cpp tests (marked ``llm``) load it in-process, and the
OpenAI-compatible tests serve it with ``python -m llama_cpp.server`` on 127.0.0.1. Error
tests use a closed local port and a small HTTP server started here on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from expertrag.errors import LLMError, ModelError
from expertrag.rag import model_files
from expertrag.rag.llm import (
    LlamaCppBackend,
    LLMBackend,
    OpenAICompatibleBackend,
    create_backend,
    parse_json_output,
)
from expertrag.rag.model_files import (
    DEFAULT_GGUF,
    GGUFSpec,
    assemble_gguf,
    default_gguf_path,
    file_sha256,
    is_verified,
    resolve_gguf,
)
from expertrag.settings import Settings

PASSAGE = (
    "The Voss Bridge over the Elbrin River was designed by the engineer Marta Kellgren "
    "and opened to traffic in 1937. It replaced a wooden ferry landing."
)
QUESTION_MESSAGES = [
    {"role": "system", "content": "Answer the question using only the passage. Reply with a few words."},
    {"role": "user", "content": f"Passage: {PASSAGE}\n\nQuestion: Who designed the Voss Bridge?"},
]
FACTS_SCHEMA = {
    "type": "object",
    "properties": {"designer": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["designer", "year"],
}
FACTS_MESSAGES = [
    {"role": "system", "content": "Extract facts from the passage. Reply with JSON only."},
    {"role": "user", "content": f"Passage: {PASSAGE}\n\nGive the designer of the bridge and the year it opened."},
]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["answer"],
}
SERVER_START_TIMEOUT_S = 180.0

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """Return the default GGUF file, assembled from its PyPI parts into the cache once."""
    missing = [name for name in DEFAULT_GGUF.part_modules if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"GGUF part packages not installed: {', '.join(missing)}")
    return resolve_gguf(Settings())


@pytest.fixture(scope="session")
def llama_backend(default_gguf: Path) -> Iterator[LlamaCppBackend]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    backend = LlamaCppBackend(Settings(llm_context_tokens=2048), model_path=default_gguf)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def llama_server_url(default_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` on a free 127.0.0.1 port and return its /v1 URL."""
    if importlib.util.find_spec("llama_cpp.server") is None or importlib.util.find_spec("sse_starlette") is None:
        pytest.skip("llama-cpp-python[server] is not installed")

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(default_gguf),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "2",
        "--seed", "0",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_ready(process, f"{base_url}/models", log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _wait_until_ready(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log_tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server exited with code {process.returncode}:\n{log_tail}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.5)
    log_tail = log_path.read_text(errors="replace")[-2000:]
    pytest.fail(f"llama_cpp.server not ready at {url} after {SERVER_START_TIMEOUT_S:g} s:\n{log_tail}")


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Chat-completions endpoint whose first path segment picks the reply.

    ``/ok``: a valid reply. ``/garbage``: a body that is not JSON. ``/no-choices``: JSON
    without choices. ``/error500``: HTTP 500. ``/unauthorized``: HTTP 401. ``/slow``: a
    valid reply after 1.5 s. ``/rejects-json-schema``: HTTP 500 naming response_format, like
    llama-cpp-python 0.3.36, when response_format has type json_schema.
    """

    server: _ScriptedServer

    def do_POST(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "payload": payload})
        mode = self.path.strip("/").split("/")[0]

        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": '{"answer": "ok"}'}}]}
        if mode == "garbage":
            self._send(200, b"<html>upstream proxy error</html>", "text/html")
        elif mode == "no-choices":
            self._send(200, json.dumps({"object": "chat.completion", "choices": []}).encode())
        elif mode == "error500":
            self._send(500, b'{"error": "model crashed"}')
        elif mode == "unauthorized":
            self._send(401, b'{"error": "invalid api key"}')
        elif mode == "slow":
            time.sleep(1.5)
            self._send(200, json.dumps(reply).encode())
        elif mode == "rejects-json-schema" and payload.get("response_format", {}).get("type") == "json_schema":
            error = {"error": {"message": "{'type': 'literal_error', 'loc': ('body', 'response_format', 'type')}"}}
            self._send(500, json.dumps(error).encode())
        else:
            self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        # The client may have timed out and closed the connection already.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        pass


class _ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.requests: list[dict] = []


@pytest.fixture
def scripted_server() -> Iterator[_ScriptedServer]:
    server = _ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _scripted_backend(server: _ScriptedServer, mode: str, **overrides: object) -> OpenAICompatibleBackend:
    host, port = server.server_address[:2]
    options: dict = {"llm_backend": "openai", "llm_timeout_s": 5.0, "llm_retries": 0}
    options.update(overrides)
    return OpenAICompatibleBackend(Settings(llm_base_url=f"http://{host}:{port}/{mode}/v1", **options))


def _make_part_modules(root: Path, chunks: list[bytes]) -> tuple[str, ...]:
    """Write importable part modules under ``root`` that return chunk files, like the PyPI parts."""
    names = []
    for index, chunk in enumerate(chunks, start=1):
        name = f"expertrag_test_part_{uuid.uuid4().hex}_{index}"
        package = root / name
        (package / "data").mkdir(parents=True)
        (package / "data" / "part.bin").write_bytes(chunk)
        (package / "__init__.py").write_text(
            "import os\n\n"
            "def get_part_path():\n"
            "    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part.bin')\n"
        )
        names.append(name)
    return tuple(names)


def _small_spec(modules: tuple[str, ...], content: bytes, sha256: str | None = None) -> GGUFSpec:
    return GGUFSpec(
        file_name="tiny.gguf",
        part_modules=modules,
        part_packages=tuple(f"{name.replace('_', '-')}==1.0" for name in modules),
        size=len(content),
        sha256=sha256 or hashlib.sha256(content).hexdigest(),
    )


# --------------------------------------------------------------------------- parse_json_output


def test_parse_json_valid_object() -> None:
    value = parse_json_output('{"answer": "Marta Kellgren", "year": 1937}', ANSWER_SCHEMA)
    assert value == {"answer": "Marta Kellgren", "year": 1937}


def test_parse_json_code_fence() -> None:
    text = 'Here you go:\n```json\n{"answer": "Kellgren", "year": 1937}\n```\nAnything else?'
    assert parse_json_output(text, ANSWER_SCHEMA) == {"answer": "Kellgren", "year": 1937}


def test_parse_json_unclosed_code_fence() -> None:
    text = '```json\n{"answer": "Kellgren"'
    assert parse_json_output(text, ANSWER_SCHEMA) == {"answer": "Kellgren"}


def test_parse_json_prose_around_object() -> None:
    text = 'Sure! The {requested} JSON is: {"answer": "Kellgren", "year": 1937} I hope it helps {:)}'
    assert parse_json_output(text, ANSWER_SCHEMA) == {"answer": "Kellgren", "year": 1937}


def test_parse_json_trailing_commas() -> None:
    text = '{"answer": "Kellgren", "aliases": ["M. K.", "Kellgren",], "year": 1937,}'
    value = parse_json_output(text)
    assert value["answer"] == "Kellgren"
    assert value["aliases"] == ["M. K.", "Kellgren"]
    assert value["year"] == 1937


def test_parse_json_comma_inside_string_kept() -> None:
    value = parse_json_output('{"answer": "Kellgren, Marta",}')
    assert value == {"answer": "Kellgren, Marta"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"answer": "Kellgren", "year": 19', {"answer": "Kellgren", "year": 19}),
        ('{"answer": "Kellg', {"answer": "Kellg"}),
        ('{"answer": "Kellgren", "ye', {"answer": "Kellgren"}),
        ('{"answer": "Kellgren", "year":', {"answer": "Kellgren"}),
        ('{"answer": "Kellgren", "tags": ["bridge", "engin', {"answer": "Kellgren", "tags": ["bridge", "engin"]}),
        ('{"answer": "Kellgren", "facts": [{"year": 1937}, {"river": tr', {"answer": "Kellgren", "facts": [{"year": 1937}, {}]}),
        ('{"answer": "back\\', {"answer": "back"}),
    ],
)
def test_parse_json_truncated(text: str, expected: dict) -> None:
    assert parse_json_output(text, ANSWER_SCHEMA) == expected


def test_parse_json_raw_newline_in_string() -> None:
    assert parse_json_output('{"answer": "first line\nsecond line"}') == {"answer": "first line\nsecond line"}


def test_parse_json_skips_nested_match() -> None:
    # The inner object matches the schema, but it is a member of the outer one, not the result.
    with pytest.raises(LLMError, match="does not match the schema"):
        parse_json_output('{"result": {"answer": "Kellgren"}}', ANSWER_SCHEMA)


def test_parse_json_picks_schema_valid_object() -> None:
    text = 'Draft: {"note": "thinking"} Final: {"answer": "Kellgren"}'
    assert parse_json_output(text, ANSWER_SCHEMA) == {"answer": "Kellgren"}


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_parse_json_empty_output(text: str) -> None:
    with pytest.raises(LLMError, match="empty"):
        parse_json_output(text, ANSWER_SCHEMA)


@pytest.mark.parametrize("text", ["I cannot answer that.", "{{{{", "{", '{"ans', "[1, 2, 3]", "{not json at all}"])
def test_parse_json_garbage_output(text: str) -> None:
    with pytest.raises(LLMError, match="no usable JSON object") as raised:
        parse_json_output(text)
    assert text.strip() in str(raised.value)


def test_parse_json_schema_mismatch() -> None:
    with pytest.raises(LLMError, match="not of type 'string'"):
        parse_json_output('{"answer": 42}', ANSWER_SCHEMA)


def test_parse_json_error_shortens_output() -> None:
    text = "no json here " * 500
    with pytest.raises(LLMError) as raised:
        parse_json_output(text)
    assert len(str(raised.value)) < 600
    assert "characters omitted" in str(raised.value)


# --------------------------------------------------------------------------- GGUF assembly


def test_default_gguf_matches_pin(default_gguf: Path) -> None:
    assert default_gguf == default_gguf_path(Settings())
    assert default_gguf.stat().st_size == 491_400_064
    assert file_sha256(default_gguf) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def test_default_gguf_reused_without_rehash(default_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime_before = default_gguf.stat().st_mtime_ns

    def fail_hash(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again although its checksum file is current")

    monkeypatch.setattr(model_files, "file_sha256", fail_hash)
    assert assemble_gguf(Settings()) == default_gguf
    assert resolve_gguf(Settings()) == default_gguf
    assert default_gguf.stat().st_mtime_ns == mtime_before


def test_corrupt_cached_gguf_rebuilt(default_gguf: Path, tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)
    cached = default_gguf_path(settings)
    cached.parent.mkdir(parents=True)
    shutil.copyfile(default_gguf, cached)
    shutil.copyfile(default_gguf.with_name(default_gguf.name + ".sha256"), cached.with_name(cached.name + ".sha256"))
    with open(cached, "r+b") as stream:
        stream.seek(1_000_000)
        stream.write(b"corrupted bytes")
    assert not is_verified(cached, DEFAULT_GGUF.size, DEFAULT_GGUF.sha256)

    assert assemble_gguf(settings) == cached
    assert cached.stat().st_size == DEFAULT_GGUF.size
    assert file_sha256(cached) == DEFAULT_GGUF.sha256
    assert [path.name for path in cached.parent.iterdir() if path.name.endswith(".tmp")] == []


def test_truncated_cached_gguf_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    spec = _small_spec(_make_part_modules(tmp_path / "modules", content), b"".join(content))
    settings = Settings(cache_dir=tmp_path / "cache")
    cached = default_gguf_path(settings, spec)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF")

    assert assemble_gguf(settings, spec).read_bytes() == b"".join(content)


def test_small_parts_joined_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = [b"first-", b"second-", b"third"]
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    spec = _small_spec(_make_part_modules(tmp_path / "modules", content), b"first-second-third")

    path = assemble_gguf(Settings(cache_dir=tmp_path / "cache"), spec)
    assert path.read_bytes() == b"first-second-third"
    assert json.loads(path.with_name(path.name + ".sha256").read_text())["sha256"] == spec.sha256


def test_missing_part_names_package(tmp_path: Path) -> None:
    spec = GGUFSpec(
        file_name="tiny.gguf",
        part_modules=("expertrag_test_absent_part_one", "expertrag_test_absent_part_two"),
        part_packages=("absent-part-one==1.0", "absent-part-two==1.0"),
        size=1,
        sha256="0" * 64,
    )
    with pytest.raises(ModelError) as raised:
        assemble_gguf(Settings(cache_dir=tmp_path), spec)
    message = str(raised.value)
    assert "absent-part-one==1.0" in message
    assert "absent-part-two==1.0" in message
    assert "pip install 'absent-part-one==1.0' 'absent-part-two==1.0'" in message
    assert not default_gguf_path(Settings(cache_dir=tmp_path), spec).exists()


def test_checksum_mismatch_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = [b"part one", b"part two"]
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    spec = _small_spec(_make_part_modules(tmp_path / "modules", content), b"part onepart two", sha256="f" * 64)
    settings = Settings(cache_dir=tmp_path / "cache")

    with pytest.raises(ModelError, match="SHA-256") as raised:
        assemble_gguf(settings, spec)
    assert "f" * 64 in str(raised.value)
    assert "--force-reinstall" in str(raised.value)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_resolve_gguf_configured_path(tmp_path: Path) -> None:
    model = tmp_path / "custom.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_gguf(Settings(llm_model_path=model)) == model


def test_resolve_gguf_missing_configured_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.gguf"
    with pytest.raises(ModelError, match="not found") as raised:
        resolve_gguf(Settings(llm_model_path=missing))
    assert str(missing) in str(raised.value)


# --------------------------------------------------------------------------- backends


def test_create_backend_by_setting() -> None:
    llama = create_backend(Settings(llm_backend="llama-cpp"))
    remote = create_backend(Settings(llm_backend="openai", llm_base_url="http://127.0.0.1:9/v1", llm_model="qwen"))
    assert isinstance(llama, LlamaCppBackend)
    assert isinstance(remote, OpenAICompatibleBackend)
    assert isinstance(llama, LLMBackend)
    assert isinstance(remote, LLMBackend)
    assert llama.name == f"llama-cpp:{DEFAULT_GGUF.file_name}"
    assert remote.name == "openai:qwen"


def test_backend_rejects_empty_messages() -> None:
    backend = OpenAICompatibleBackend(Settings(llm_base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match="messages is empty"):
        backend.complete([])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        backend.complete([{"role": "user"}])


@pytest.mark.llm
@needs_llama_cpp
def test_llama_cpp_extractive_answer(llama_backend: LlamaCppBackend) -> None:
    answer = llama_backend.complete(QUESTION_MESSAGES, max_tokens=24)
    assert "Kellgren" in answer


@pytest.mark.llm
@needs_llama_cpp
def test_llama_cpp_json_schema(llama_backend: LlamaCppBackend) -> None:
    text = llama_backend.complete(FACTS_MESSAGES, max_tokens=64, json_schema=FACTS_SCHEMA)
    facts = parse_json_output(text, FACTS_SCHEMA)
    assert "Kellgren" in facts["designer"]
    assert facts["year"] == 1937


@pytest.mark.llm
@needs_llama_cpp
def test_llama_cpp_threads_share_model(llama_backend: LlamaCppBackend) -> None:
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(llama_backend.complete(QUESTION_MESSAGES, max_tokens=16)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 2
    assert all("Kellgren" in answer for answer in answers)


@pytest.mark.llm
@needs_llama_cpp
def test_llama_cpp_prompt_over_context(llama_backend: LlamaCppBackend) -> None:
    long_passage = "The bridge has many stone arches. " * 600
    messages = [{"role": "user", "content": long_passage}]
    with pytest.raises(LLMError, match="context"):
        llama_backend.complete(messages, max_tokens=8)


def test_llama_cpp_missing_model_file(tmp_path: Path) -> None:
    backend = LlamaCppBackend(Settings(llm_model_path=tmp_path / "absent.gguf"))
    with pytest.raises(ModelError, match="not found"):
        backend.complete(QUESTION_MESSAGES)


@pytest.mark.llm
def test_openai_server_plain_completion(llama_server_url: str) -> None:
    backend = OpenAICompatibleBackend(Settings(llm_base_url=llama_server_url, llm_timeout_s=120.0, llm_retries=0))
    answer = backend.complete(QUESTION_MESSAGES, max_tokens=24)
    assert "Kellgren" in answer


@pytest.mark.llm
def test_openai_server_json_schema(llama_server_url: str) -> None:
    backend = OpenAICompatibleBackend(Settings(llm_base_url=llama_server_url, llm_timeout_s=120.0, llm_retries=0))
    text = backend.complete(FACTS_MESSAGES, max_tokens=64, json_schema=FACTS_SCHEMA)
    facts = parse_json_output(text, FACTS_SCHEMA)
    assert "Kellgren" in facts["designer"]
    assert facts["year"] == 1937


def test_openai_closed_port_names_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    backend = OpenAICompatibleBackend(Settings(llm_base_url=url, llm_timeout_s=2.0, llm_retries=1))
    started = time.monotonic()
    with pytest.raises(LLMError, match="Cannot reach the LLM server") as raised:
        backend.complete(QUESTION_MESSAGES)
    assert f"{url}/chat/completions" in str(raised.value)
    assert "after 2 attempt(s)" in str(raised.value)
    assert time.monotonic() - started < 10.0


def test_openai_garbage_body(scripted_server: _ScriptedServer) -> None:
    backend = _scripted_backend(scripted_server, "garbage")
    with pytest.raises(LLMError, match="not JSON") as raised:
        backend.complete(QUESTION_MESSAGES)
    assert "/garbage/v1/chat/completions" in str(raised.value)
    assert "upstream proxy error" in str(raised.value)


def test_openai_body_without_choices(scripted_server: _ScriptedServer) -> None:
    backend = _scripted_backend(scripted_server, "no-choices")
    with pytest.raises(LLMError, match=r"choices\[0\]\.message\.content"):
        backend.complete(QUESTION_MESSAGES)


def test_openai_status_500_retried(scripted_server: _ScriptedServer) -> None:
    backend = _scripted_backend(scripted_server, "error500", llm_retries=2)
    started = time.monotonic()
    with pytest.raises(LLMError, match="HTTP 500") as raised:
        backend.complete(QUESTION_MESSAGES)
    assert "model crashed" in str(raised.value)
    assert len(scripted_server.requests) == 3
    assert time.monotonic() - started < 10.0


def test_openai_timeout(scripted_server: _ScriptedServer) -> None:
    backend = _scripted_backend(scripted_server, "slow", llm_timeout_s=0.3, llm_retries=1)
    started = time.monotonic()
    with pytest.raises(LLMError, match="timed out") as raised:
        backend.complete(QUESTION_MESSAGES)
    elapsed = time.monotonic() - started
    assert "/slow/v1/chat/completions" in str(raised.value)
    assert len(scripted_server.requests) == 2
    assert elapsed < 1.5


def test_openai_key_sent_not_shown(scripted_server: _ScriptedServer) -> None:
    backend = _scripted_backend(scripted_server, "unauthorized", llm_api_key="secret-key-123")
    with pytest.raises(LLMError, match="HTTP 401") as raised:
        backend.complete(QUESTION_MESSAGES)
    assert "secret-key-123" not in str(raised.value)
    assert "EXPERTRAG_LLM_API_KEY" in str(raised.value)
    assert scripted_server.requests[0]["headers"]["Authorization"] == "Bearer secret-key-123"


def test_openai_request_payload(scripted_server: _ScriptedServer) -> None:
    backend = _scripted_backend(scripted_server, "ok", llm_model="qwen-test", llm_max_tokens=99, llm_seed=7)
    assert backend.complete(QUESTION_MESSAGES, json_schema=ANSWER_SCHEMA) == '{"answer": "ok"}'

    payload = scripted_server.requests[0]["payload"]
    assert payload["model"] == "qwen-test"
    assert payload["messages"] == QUESTION_MESSAGES
    assert payload["max_tokens"] == 99
    assert payload["temperature"] == 0.0
    assert payload["seed"] == 7
    assert payload["response_format"]["type"] == "json_schema"
    assert payload["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA
    assert "Authorization" not in scripted_server.requests[0]["headers"]


def test_openai_json_object_fallback(scripted_server: _ScriptedServer) -> None:
    backend = _scripted_backend(scripted_server, "rejects-json-schema", llm_retries=2)
    assert backend.complete(QUESTION_MESSAGES, json_schema=ANSWER_SCHEMA) == '{"answer": "ok"}'
    assert backend.complete(QUESTION_MESSAGES, json_schema=ANSWER_SCHEMA) == '{"answer": "ok"}'

    formats = [request["payload"]["response_format"] for request in scripted_server.requests]
    assert [response_format["type"] for response_format in formats] == ["json_schema", "json_object", "json_object"]
    assert formats[1]["schema"] == ANSWER_SCHEMA


def test_openai_url_credentials_hidden() -> None:
    url = f"http://user:hunter2@127.0.0.1:{_free_port()}/v1"
    backend = OpenAICompatibleBackend(Settings(llm_base_url=url, llm_timeout_s=2.0, llm_retries=0))
    with pytest.raises(LLMError) as raised:
        backend.complete(QUESTION_MESSAGES)
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


def test_openai_ignores_proxy_for_loopback(scripted_server: _ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy address is a closed local port, so the request fails if the proxy is used.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{_free_port()}")
    backend = _scripted_backend(scripted_server, "ok")
    assert backend.complete(QUESTION_MESSAGES) == '{"answer": "ok"}'
