"""The default generator backend: a GGUF model run in-process by llama-cpp-python."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertrag.errors import LLMError, ModelError
from expertrag.rag.llm import check_messages, shorten
from expertrag.rag.model_files import default_gguf_path, resolve_gguf
from expertrag.settings import Settings

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)


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

        ``settings.llm_local_timeout_s`` bounds both the wait for the model (another thread may
        be generating) and the generation, and either overrun raises LLMError. A local
        failure would repeat, so ``llm_retries`` does not apply here.
        """
        check_messages(messages)
        request: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens or self.settings.llm_max_tokens,
            "temperature": temperature,
            "seed": self.settings.llm_seed,
        }
        if json_schema is not None:
            request["response_format"] = {"type": "json_object", "schema": json_schema}

        timeout_s = self.settings.llm_local_timeout_s
        if not self._lock.acquire(timeout=timeout_s):
            raise LLMError(
                f"{self.name} is busy: another generation kept the model for more than {timeout_s:g} s "
                "(EXPERTRAG_LLM_LOCAL_TIMEOUT_S). Send fewer requests at once or raise the timeout."
            )
        try:
            llama = self._load_locked()
            logger.debug("%s request: %s", self.name, shorten(json.dumps(messages, ensure_ascii=False)))
            started = time.perf_counter()
            content, pieces = self._generate(llama, request, started + timeout_s)
        finally:
            self._lock.release()

        logger.debug(
            "%s reply in %.2f s (%d streamed pieces): %s", self.name, time.perf_counter() - started, pieces, shorten(content)
        )
        return content

    def _generate(self, llama: Llama, request: dict[str, Any], deadline: float) -> tuple[str, int]:
        """Stream one reply and return its text and the number of pieces; stop at ``deadline``.

        NOTE: the deadline is checked between generated tokens, so reading a long prompt
        (before the first token) can overrun it by that prompt's evaluation time.
        """
        parts: list[str] = []
        try:
            stream = llama.create_chat_completion(**request, stream=True)
            for chunk in stream:
                delta = chunk["choices"][0].get("delta") or {}
                parts.append(delta.get("content") or "")
                if time.perf_counter() > deadline:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
                    raise LLMError(
                        f"{self.name} timed out: the reply took longer than {self.settings.llm_local_timeout_s:g} s "
                        f"(EXPERTRAG_LLM_LOCAL_TIMEOUT_S) after {len(parts)} pieces. Raise the timeout or lower max_tokens."
                    )
        except (ValueError, RuntimeError) as error:
            # llama-cpp-python raises ValueError when the prompt exceeds n_ctx and
            # RuntimeError when llama_decode fails.
            raise LLMError(
                f"{self.name} failed to generate a reply: {error}. A prompt longer than the "
                f"context ({self.settings.llm_context_tokens} tokens, EXPERTRAG_LLM_CONTEXT_TOKENS) "
                "must be shortened, for example with fewer passages (EXPERTRAG_TOP_K)."
            ) from error
        return "".join(parts), len(parts)

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
