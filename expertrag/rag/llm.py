"""Chat-completion backends of the generator, and parsing of the JSON they return.

Two backends implement ``LLMBackend``: ``LlamaCppBackend`` runs a GGUF model in-process
through llama-cpp-python, and ``OpenAICompatibleBackend`` calls any server with an
OpenAI-style ``/chat/completions`` endpoint (llama.cpp server, vLLM, Ollama). Small local
models often damage the JSON they are asked for, so ``parse_json_output`` repairs the usual
damage before it validates the result against a JSON Schema.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from expertrag.settings import Settings

logger = logging.getLogger(__name__)

Message = dict[str, str]

# Characters of a prompt, response or body that logs and error messages show.
_SHORTEN_LIMIT = 300



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




def check_messages(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise ValueError("messages is empty. Pass at least one {'role': ..., 'content': ...} message.")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(f"messages[{index}] needs string 'role' and 'content' keys, got {message!r}")


def shorten(text: str, limit: int = _SHORTEN_LIMIT) -> str:
    """Return ``text`` cut to about ``limit`` characters, keeping its start and end."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} … [{len(text) - 2 * half} characters omitted] … {text[-half:]}"


# The backends and the JSON parser live in their own modules; importing them here keeps
# ``expertrag.rag.llm`` the one import path callers need.
from expertrag.rag.json_output import parse_json_output  # noqa: E402
from expertrag.rag.llama_cpp_backend import LlamaCppBackend  # noqa: E402
from expertrag.rag.openai_backend import OpenAICompatibleBackend  # noqa: E402

__all__ = ["LLMBackend", "LlamaCppBackend", "Message", "OpenAICompatibleBackend", "create_backend", "parse_json_output",
           "check_messages", "shorten"]
