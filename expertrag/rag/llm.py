"""Chat-completion backends of the generator, and parsing of the JSON they return.

Two backends implement ``LLMBackend``: ``LlamaCppBackend`` runs a GGUF model in-process
through llama-cpp-python, and ``OpenAICompatibleBackend`` calls any server with an
OpenAI-style ``/chat/completions`` endpoint (llama.cpp server, vLLM, Ollama). Small local
models often damage the JSON they are asked for, so ``parse_json_output`` repairs the usual
damage before it validates the result against a JSON Schema.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx
import jsonschema

from expertrag.errors import LLMError, ModelError
from expertrag.rag.model_files import default_gguf_path, resolve_gguf
from expertrag.settings import Settings

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

Message = dict[str, str]

# Characters of a prompt, response or body that logs and error messages show.
_SHORTEN_LIMIT = 300
_MAX_BACKOFF_S = 8.0
# HTTP statuses after which a request is sent again: rate limiting and server errors.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@runtime_checkable
class LLMBackend(Protocol):
    """A chat model that turns a list of messages into the text of one reply."""

    name: str
    """Backend and model, for logs and result records (for example ``llama-cpp:model.gguf``)."""

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        json_schema: dict | None = None,
        temperature: float = 0.0,
    ) -> str:
        """Generate the assistant reply to ``messages`` (each with ``role`` and ``content``).

        ``max_tokens`` defaults to ``settings.llm_max_tokens``. With ``json_schema`` the
        backend constrains decoding to JSON for that schema as far as the runtime supports
        it. Callers still pass the text through ``parse_json_output``, because a reply cut
        at ``max_tokens`` is incomplete JSON. Raises LLMError when generation fails.
        """
        ...


def create_backend(settings: Settings | None = None) -> LLMBackend:
    """Create the backend that ``settings.llm_backend`` names."""
    settings = settings or Settings()
    if settings.llm_backend == "llama-cpp":
        return LlamaCppBackend(settings)
    if settings.llm_backend == "openai":
        return OpenAICompatibleBackend(settings)
    raise ValueError(f"invalid llm_backend {settings.llm_backend!r}, expected 'llama-cpp' or 'openai'")


# --------------------------------------------------------------------------- llama-cpp


class LlamaCppBackend:
    """A GGUF model run in-process by llama-cpp-python.

    The model is loaded on the first ``complete`` call (or by ``load``) and kept until
    ``close``. A lock serializes loading and generation, because one llama.cpp context
    cannot decode two prompts at once, so threads share the model but wait for each other.
    """

    def __init__(self, settings: Settings | None = None, *, model_path: Path | None = None) -> None:
        self.settings = settings or Settings()
        self._model_path = Path(model_path) if model_path is not None else None
        display_path = self._model_path or self.settings.llm_model_path or default_gguf_path(self.settings)
        self.name = f"llama-cpp:{Path(display_path).name}"
        self._llama: Llama | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model now instead of on the first ``complete`` call."""
        with self._lock:
            self._load_locked()

    def close(self) -> None:
        """Free the loaded model. A later ``complete`` loads it again."""
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        json_schema: dict | None = None,
        temperature: float = 0.0,
    ) -> str:
        """Generate the reply to ``messages`` as ``LLMBackend.complete`` describes.

        A ``json_schema`` becomes a llama.cpp grammar, so every sampled token keeps the
        output inside the schema. llama-cpp-python falls back to a grammar for any JSON
        when it cannot convert the schema.
        """
        _check_messages(messages)
        request: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens or self.settings.llm_max_tokens,
            "temperature": temperature,
            "seed": self.settings.llm_seed,
        }
        if json_schema is not None:
            request["response_format"] = {"type": "json_object", "schema": json_schema}

        with self._lock:
            llama = self._load_locked()
            started = time.perf_counter()
            logger.debug("%s request: %s", self.name, _shorten(json.dumps(messages, ensure_ascii=False)))
            try:
                response = llama.create_chat_completion(**request)
            except (ValueError, RuntimeError) as error:
                # llama-cpp-python raises ValueError when the prompt exceeds n_ctx and
                # RuntimeError when llama_decode fails.
                raise LLMError(
                    f"{self.name} failed to generate a reply: {error}. A prompt longer than the "
                    f"context ({self.settings.llm_context_tokens} tokens, EXPERTRAG_LLM_CONTEXT_TOKENS) "
                    "must be shortened, for example with fewer passages (EXPERTRAG_TOP_K)."
                ) from error
        elapsed = time.perf_counter() - started

        content = response["choices"][0]["message"].get("content") or ""
        usage = response.get("usage", {})
        logger.debug(
            "%s reply in %.2f s (%s prompt tokens, %s completion tokens): %s",
            self.name,
            elapsed,
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            _shorten(content),
        )
        return content

    def _load_locked(self) -> Llama:
        """Return the loaded model, loading it first if needed. The caller holds the lock."""
        if self._llama is not None:
            return self._llama

        path = self._model_path or resolve_gguf(self.settings)
        if not path.is_file():
            raise ModelError(f"GGUF model file not found: {path}")

        try:
            from llama_cpp import Llama
        except ImportError as error:
            raise ModelError(
                "The llama-cpp backend needs llama-cpp-python, which is not installed. Install it "
                "with: pip install 'expertrag[llm]' (it compiles llama.cpp, about 5 minutes), or set "
                "EXPERTRAG_LLM_BACKEND=openai to use an OpenAI-compatible server."
            ) from error

        threads = self.settings.llm_threads or _available_cpus()
        started = time.perf_counter()
        try:
            self._llama = Llama(
                model_path=str(path),
                n_ctx=self.settings.llm_context_tokens,
                n_threads=threads,
                n_threads_batch=threads,
                seed=self.settings.llm_seed,
                verbose=False,
            )
        except ValueError as error:
            raise ModelError(
                f"llama-cpp-python failed to load the GGUF file {path}: {error}. Check that the "
                "file is a complete GGUF model that this llama.cpp version supports."
            ) from error
        logger.info(
            "loaded %s in %.1f s (n_ctx=%d, threads=%d)",
            path,
            time.perf_counter() - started,
            self.settings.llm_context_tokens,
            threads,
        )
        return self._llama


def _available_cpus() -> int:
    """Return how many CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAICompatibleBackend:
    """A chat model behind an OpenAI-compatible HTTP API (``POST {base_url}/chat/completions``).

    Connection failures, timeouts and the statuses 408, 429, 500, 502, 503 and 504 are retried
    ``settings.llm_retries`` times with exponential backoff (0.5 s, 1 s, 2 s … at most 8 s).
    ``settings.llm_timeout_s`` bounds each connect, read and write step, not the whole
    request. Errors name the endpoint URL but never the API key.
    """

    def __init__(self, settings: Settings | None = None, *, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings or Settings()
        self.url = self.settings.llm_base_url.rstrip("/") + "/chat/completions"
        self._display_url = _redact_url(self.url)
        self.name = f"openai:{self.settings.llm_model}"
        # Servers such as llama-cpp-python 0.3.36 reject the OpenAI form {"type": "json_schema"}
        # but accept {"type": "json_object", "schema": ...}. After one rejection this backend
        # switches to the second form for the rest of its life.
        self._json_object_format = False

        headers = {"Accept": "application/json"}
        if self.settings.llm_api_key:
            headers["Authorization"] = f"Bearer {self.settings.llm_api_key}"
        timeout_s = self.settings.llm_timeout_s
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            # A proxy from HTTP_PROXY and similar variables cannot reach this machine's loopback.
            trust_env=not _is_loopback(self.url),
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        json_schema: dict | None = None,
        temperature: float = 0.0,
    ) -> str:
        """Generate the reply to ``messages`` as ``LLMBackend.complete`` describes.

        A ``json_schema`` is sent as ``response_format``. Whether the server enforces it
        depends on the server.
        """
        _check_messages(messages)
        payload: dict[str, Any] = {
            "model": self.settings.llm_model,
            "messages": messages,
            "max_tokens": max_tokens or self.settings.llm_max_tokens,
            "temperature": temperature,
            "seed": self.settings.llm_seed,
        }
        if json_schema is not None:
            payload["response_format"] = self._response_format(json_schema)

        response = self._post_with_retries(payload)
        if json_schema is not None and not self._json_object_format and _rejects_response_format(response):
            logger.warning(
                "%s rejected response_format type json_schema (HTTP %d), so this backend sends "
                "json_object with a schema from now on",
                self._display_url,
                response.status_code,
            )
            self._json_object_format = True
            payload["response_format"] = self._response_format(json_schema)
            response = self._post_with_retries(payload)

        if not response.is_success:
            raise LLMError(self._status_message(response))
        return self._read_content(response)

    def _response_format(self, json_schema: dict) -> dict[str, Any]:
        if self._json_object_format:
            return {"type": "json_object", "schema": json_schema}
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(json_schema.get("title", "output")))[:64] or "output"
        return {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}

    def _post_with_retries(self, payload: dict[str, Any]) -> httpx.Response:
        """Send ``payload``, retrying transport errors and retryable statuses.

        Returns the last response, which may be an error status. Raises LLMError when no
        response arrives.
        """
        attempts = self.settings.llm_retries + 1
        logger.debug("POST %s: %s", self._display_url, _shorten(json.dumps(payload, ensure_ascii=False)))
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TimeoutException as error:
                failure = (
                    f"LLM request to {self._display_url} timed out ({type(error).__name__}, limit "
                    f"{self.settings.llm_timeout_s:g} s per step) after {attempt} attempt(s). Raise "
                    "EXPERTRAG_LLM_TIMEOUT_S or lower max_tokens."
                )
                cause: Exception | None = error
            except httpx.TransportError as error:
                failure = (
                    f"Cannot reach the LLM server at {self._display_url}: {str(error) or type(error).__name__} "
                    f"(after {attempt} attempt(s)). Start the server or set EXPERTRAG_LLM_BASE_URL."
                )
                cause = error
            else:
                logger.debug(
                    "%s returned HTTP %d in %.2f s", self._display_url, response.status_code, time.perf_counter() - started
                )
                if (
                    response.status_code not in _RETRY_STATUSES
                    or attempt == attempts
                    or _rejects_response_format(response)
                ):
                    return response
                failure = f"HTTP {response.status_code}"
                cause = None

            if attempt == attempts:
                raise LLMError(failure) from cause
            delay = min(0.5 * 2 ** (attempt - 1), _MAX_BACKOFF_S)
            logger.warning(
                "LLM request to %s failed (%s), retry %d of %d in %.1f s",
                self._display_url,
                failure if cause is None else type(cause).__name__,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises on its last attempt")

    def _status_message(self, response: httpx.Response) -> str:
        message = f"LLM server at {self._display_url} returned HTTP {response.status_code}: {_shorten(response.text)}"
        if response.status_code in (401, 403):
            return f"{message}. Check the API key (EXPERTRAG_LLM_API_KEY)."
        if response.status_code == 404:
            return f"{message}. Check EXPERTRAG_LLM_BASE_URL, which usually ends in /v1, and EXPERTRAG_LLM_MODEL."
        return message

    def _read_content(self, response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            raise LLMError(
                f"LLM server at {self._display_url} returned a body that is not JSON: {_shorten(response.text)!r}"
            ) from None

        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise LLMError(
                f"LLM server at {self._display_url} returned no text in choices[0].message.content: "
                f"{_shorten(response.text)!r}"
            )
        logger.debug("%s reply: %s", self._display_url, _shorten(content))
        return content


def _rejects_response_format(response: httpx.Response) -> bool:
    """Tell whether ``response`` rejects the request's ``response_format``.

    llama-cpp-python 0.3.36 returns HTTP 500 for an unsupported format, with a validation
    error that names the field, so the status alone cannot tell this from a server fault.
    """
    return response.status_code in (400, 422, 500) and "response_format" in response.text


def _redact_url(url: str) -> str:
    """Return ``url`` without a user name or password, for messages and logs."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    if not parsed.userinfo:
        return url
    return str(parsed.copy_with(username=None, password=None))


def _is_loopback(url: str) -> bool:
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- shared helpers


def _check_messages(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise ValueError("messages is empty. Pass at least one {'role': ..., 'content': ...} message.")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(f"messages[{index}] needs string 'role' and 'content' keys, got {message!r}")


def _shorten(text: str, limit: int = _SHORTEN_LIMIT) -> str:
    """Return ``text`` cut to about ``limit`` characters, keeping its start and end."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} … [{len(text) - 2 * half} characters omitted] … {text[-half:]}"


# --------------------------------------------------------------------------- JSON output

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
# Candidate start positions ('{') tried before giving up, so a long reply stays cheap.
_MAX_JSON_STARTS = 20
# Places to cut a truncated object back to, latest first, before giving up on it.
_MAX_CUT_POINTS = 50
_CLOSERS = {"{": "}", "[": "]"}


def parse_json_output(text: str, schema: dict | None = None) -> dict:
    """Extract the JSON object from an LLM reply, repairing common damage, and validate it.

    Repairs Markdown code fences, prose before or after the object, trailing commas, raw
    control characters inside strings, and output cut off mid-object: open strings,
    arrays and objects are closed, and an incomplete last member is dropped. Returns the
    first top-level object (never one nested inside another) that is valid for ``schema``,
    or the first one when no schema is given.

    Raises LLMError, with a shortened copy of ``text``, when no such object can be
    recovered.
    """
    if text is None or not text.strip():
        raise LLMError("LLM output is empty, but a JSON object was expected.")

    body = _strip_code_fence(text)
    validator = _validator_for(schema)
    decoder = json.JSONDecoder(strict=False)
    problems: list[str] = []

    search_from = 0
    for _ in range(_MAX_JSON_STARTS):
        start = body.find("{", search_from)
        if start < 0:
            break

        try:
            value, end = decoder.raw_decode(body, start)
            consumed = end - start
        except json.JSONDecodeError as error:
            repaired = _repair_json(body[start:], decoder)
            if repaired is None:
                problems.append(f"invalid JSON at character {start}: {error.msg}")
                search_from = start + 1
                continue
            candidate, consumed = repaired
            value = decoder.decode(candidate)
            logger.debug("repaired LLM JSON output %s into %s", _shorten(body[start:]), _shorten(candidate))

        # The objects nested inside this one are its members, so the search resumes after it.
        search_from = start + consumed
        if validator is None:
            return value
        schema_error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if schema_error is None:
            return value
        problems.append(f"object does not match the schema: {schema_error.message} at {schema_error.json_path}")

    problem = problems[0] if problems else "no '{' found"
    raise LLMError(f"LLM output contains no usable JSON object ({problem}). Output: {_shorten(text)!r}")


def _strip_code_fence(text: str) -> str:
    """Return the first Markdown code block that contains '{', or ``text`` without one."""
    for match in _FENCE.finditer(text):
        if "{" in match.group(1):
            return match.group(1)
    return text


def _validator_for(schema: dict | None) -> jsonschema.protocols.Validator | None:
    """Return a validator for ``schema``. Raises jsonschema.SchemaError for an invalid schema."""
    if schema is None:
        return None
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _repair_json(text: str, decoder: json.JSONDecoder) -> tuple[str, int] | None:
    """Repair the JSON object that starts ``text``, which begins with '{'.

    Removes trailing commas and scans to the end of the object. When the text ends (or a
    bracket does not match) before the object closes, the open string and brackets are
    closed. If that is not valid JSON, the text is cut back to a comma or opening bracket,
    dropping the incomplete member, and closed again.

    Returns the repaired JSON and the number of characters of ``text`` it covers, or None
    when nothing decodes.
    """
    output: list[str] = []
    stack: list[str] = []
    # Places where cutting the text leaves only complete members: (length of output, stack).
    cut_points: list[tuple[int, tuple[str, ...]]] = []
    in_string = False
    escaped = False
    consumed = len(text)

    for index, char in enumerate(text):
        if in_string:
            output.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue

        if char in "{[":
            stack.append(char)
            output.append(char)
            cut_points.append((len(output), tuple(stack)))
            continue
        if char in "}]":
            if not stack or _CLOSERS[stack[-1]] != char:
                consumed = index
                break
            _drop_trailing_comma(output)
            stack.pop()
            output.append(char)
            if not stack:
                candidate = "".join(output)
                return (candidate, index + 1) if _decode_or_none(candidate, decoder) is not None else None
            continue

        if char == '"':
            in_string = True
        elif char == ",":
            cut_points.append((len(output), tuple(stack)))
        output.append(char)

    # The text ended, or broke off at a wrong bracket, before the object closed.
    if in_string:
        if escaped:
            output.pop()
        output.append('"')
    candidates = [(output, tuple(stack))]
    for length, open_brackets in reversed(cut_points[-_MAX_CUT_POINTS:]):
        # Cutting back to the outer '{' would turn any damaged text into {}.
        if length > 1:
            candidates.append((output[:length], open_brackets))

    for prefix, open_brackets in candidates:
        closed = list(prefix)
        _drop_trailing_comma(closed)
        closed.extend(_CLOSERS[bracket] for bracket in reversed(open_brackets))
        candidate = "".join(closed)
        # An empty object keeps nothing of the output, so it counts as a failure.
        if _decode_or_none(candidate, decoder):
            return candidate, consumed
    return None


def _decode_or_none(candidate: str, decoder: json.JSONDecoder) -> Any:
    try:
        return decoder.decode(candidate)
    except json.JSONDecodeError:
        return None


def _drop_trailing_comma(output: list[str]) -> None:
    """Remove a ',' (and the whitespace after it) from the end of ``output``."""
    index = len(output) - 1
    while index >= 0 and output[index].isspace():
        index -= 1
    if index >= 0 and output[index] == ",":
        del output[index:]


__all__ = [
    "LLMBackend",
    "LlamaCppBackend",
    "Message",
    "OpenAICompatibleBackend",
    "create_backend",
    "parse_json_output",
]
