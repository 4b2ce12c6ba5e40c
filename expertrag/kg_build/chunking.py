"""Sentence-aware chunking in windows measured in the encoder's word pieces.

Chunks follow sentence boundaries, hold at most ``max_tokens`` word pieces and repeat
up to ``overlap_tokens`` of the previous chunk's last sentences. A sentence longer
than a whole window is cut at word-piece boundaries. Offsets are characters of the
document text, so ``document.text[chunk.start:chunk.end] == chunk.text``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from expertrag.records import Chunk, Document, content_id

logger = logging.getLogger(__name__)

# A sentence ends at ., ! or ? (optionally followed by quotes or brackets) before
# whitespace and an upper-case letter, digit or opening bracket, or at a blank line.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9(\[\"'])|\n\s*\n")
# Abbreviations that end with a period but rarely end a sentence.
_ABBREVIATIONS = frozenset(
    "e.g i.e et al fig figs eq ref refs vs approx dr mr mrs ms prof st no vol ca cf resp".split()
)


class Tokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer that chunking uses."""

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Return (start, end) character spans of the sentences of ``text``, whitespace trimmed."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.start()
        last_word = text[max(start, end - 12) : end].rstrip(".").split()[-1:] if end > start else []
        if last_word and last_word[0].lower() in _ABBREVIATIONS:
            continue
        spans.append((start, end))
        start = match.end()
    spans.append((start, len(text)))
    return [_trim(text, s, e) for s, e in spans if text[s:e].strip()]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


@dataclass
class Chunker:
    """Cut documents into overlapping sentence windows of at most ``max_tokens`` word pieces."""

    tokenizer: Tokenizer
    max_tokens: int = 200
    overlap_tokens: int = 40

    def __post_init__(self) -> None:
        # Sentences are tokenized only to count word pieces, never fed to the model, so the
        # tokenizer's warning about sequences longer than the model's maximum does not apply.
        warnings = getattr(self.tokenizer, "deprecation_warnings", None)
        if isinstance(warnings, dict):
            warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be smaller than max_tokens ({self.max_tokens})")

    def chunk(self, document: Document, collection: str) -> list[Chunk]:
        """Return the chunks of one document in reading order."""
        pieces = self._pieces(document.text)
        windows = self._windows(pieces)
        chunks = []
        for position, (start, end, n_tokens) in enumerate(windows):
            text = document.text[start:end]
            chunk_id = content_id(collection, document.doc_id, str(start), str(end), text)
            chunks.append(Chunk(chunk_id, document.doc_id, collection, position, start, end, text, n_tokens))
        return chunks

    def chunk_many(self, documents: Sequence[Document], collection: str) -> list[list[Chunk]]:
        """Chunk several documents; the result is aligned with ``documents``."""
        return [self.chunk(document, collection) for document in documents]

    def _pieces(self, text: str) -> list[tuple[int, int, int]]:
        """Sentences as (start, end, word pieces), with over-long sentences cut into windows."""
        spans = split_sentences(text)
        if not spans:
            return []
        encoded = self.tokenizer(
            [text[s:e] for s, e in spans], add_special_tokens=False, return_offsets_mapping=True
        )
        pieces: list[tuple[int, int, int]] = []
        for (start, end), offsets in zip(spans, encoded["offset_mapping"]):
            if len(offsets) <= self.max_tokens:
                pieces.append((start, end, len(offsets)))
                continue
            for first in range(0, len(offsets), self.max_tokens):
                window = offsets[first : first + self.max_tokens]
                pieces.append((start + window[0][0], start + window[-1][1], len(window)))
        return pieces

    def _windows(self, pieces: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        windows: list[tuple[int, int, int]] = []
        first = 0
        while first < len(pieces):
            last = first
            total = pieces[first][2]
            while last + 1 < len(pieces) and total + pieces[last + 1][2] <= self.max_tokens:
                last += 1
                total += pieces[last][2]
            windows.append((pieces[first][0], pieces[last][1], total))
            if last + 1 >= len(pieces):
                break
            # The next window starts with as many trailing pieces as fit in the overlap,
            # and always moves forward by at least one piece.
            next_first = last + 1
            overlap = 0
            while next_first - 1 > first and overlap + pieces[next_first - 1][2] <= self.overlap_tokens:
                next_first -= 1
                overlap += pieces[next_first][2]
            first = next_first
        return windows
