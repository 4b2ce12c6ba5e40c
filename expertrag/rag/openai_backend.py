"""A generator backend for any server with an OpenAI-style ``/chat/completions`` endpoint.

llama.cpp server, vLLM, Ollama and hosted APIs speak this protocol, so bigger models
than the local default plug in by URL.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from typing import Any

import httpx

from expertrag.errors import LLMError
from expertrag.rag.llm import check_messages, shorten
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 8.0
# HTTP statuses after which a request is sent again: rate limiting and server errors.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class OpenAICompatibleBackend:
    """A chat model behind an OpenAI-compatible HTTP API (``POST {base_url}/chat/completions``).

    Connection failures, timeouts and the statuses 408, 429, 500, 502, 503 and 504 are retried
    ``settings.llm_retries`` times with exponential backoff (0.5 s, 1 s, 2 s … at most 8 s).
    ``settings.llm_timeout_s`` bounds each connect, read and write step and also the whole
    body of one attempt, so a server that sends a byte now and then cannot hold a request
    open. Errors name the endpoint URL but never the API key.
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
        check_messages(messages)
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
        logger.debug("POST %s: %s", self._display_url, shorten(json.dumps(payload, ensure_ascii=False)))
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                response = self._post_before_deadline(payload, started + self.settings.llm_timeout_s)
            except httpx.TimeoutException as error:
                failure = (
                    f"LLM request to {self._display_url} timed out ({type(error).__name__}, limit "
                    f"{self.settings.llm_timeout_s:g} s per step and per attempt) after {attempt} attempt(s). Raise "
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

    def _post_before_deadline(self, payload: dict[str, Any], deadline: float) -> httpx.Response:
        """POST ``payload`` and read the body, raising httpx.ReadTimeout once ``deadline`` passes.

        httpx's timeouts bound each read, so a server that sends a byte now and then would
        keep a plain ``post`` waiting for much longer than ``llm_timeout_s``.
        """
        with self._client.stream("POST", self.url, json=payload) as streamed:
            body = bytearray()
            for piece in streamed.iter_raw():
                body.extend(piece)
                if time.perf_counter() > deadline:
                    raise httpx.ReadTimeout("the response body took longer than the whole-request limit", request=streamed.request)
            return httpx.Response(streamed.status_code, headers=streamed.headers, content=bytes(body), request=streamed.request)

    def _status_message(self, response: httpx.Response) -> str:
        message = f"LLM server at {self._display_url} returned HTTP {response.status_code}: {shorten(response.text)}"
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
                f"LLM server at {self._display_url} returned a body that is not JSON: {shorten(response.text)!r}"
            ) from None

        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise LLMError(
                f"LLM server at {self._display_url} returned no text in choices[0].message.content: "
                f"{shorten(response.text)!r}"
            )
        logger.debug("%s reply: %s", self._display_url, shorten(content))
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
