"""Sentence-aware chunking in encoder word pieces."""

from __future__ import annotations

import pytest

from expertrag.kg_build.chunking import Chunker, split_sentences
from expertrag.records import Document
from expertrag.retrievers.encoder import Encoder


@pytest.fixture(scope="module")
def tokenizer():
    return Encoder.shared().tokenizer


def test_split_sentences_keeps_abbreviations() -> None:
    text = "Smith et al. showed this. Values rose, e.g. in Fig. 2. A new sentence starts here!"
    spans = split_sentences(text)
    sentences = [text[s:e] for s, e in spans]
    assert sentences == ["Smith et al. showed this.", "Values rose, e.g. in Fig. 2.", "A new sentence starts here!"]


def test_split_sentences_on_blank_lines() -> None:
    text = "Title line\n\nBody starts here. Second one."
    assert [text[s:e] for s, e in split_sentences(text)] == ["Title line", "Body starts here.", "Second one."]


def test_chunks_respect_size_and_offsets(tokenizer) -> None:
    sentences = [f"Sentence number {i} talks about protein {i} and its binding partner." for i in range(60)]
    document = Document(doc_id="d1", text=" ".join(sentences))
    chunker = Chunker(tokenizer, max_tokens=64, overlap_tokens=16)
    chunks = chunker.chunk(document, "c")

    assert len(chunks) > 5
    for chunk in chunks:
        assert document.text[chunk.start:chunk.end] == chunk.text
        assert chunk.n_tokens <= 64
        assert len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) <= 64 + 2
    assert chunks[0].start == 0
    assert chunks[-1].end == len(document.text)
    assert [c.position for c in chunks] == list(range(len(chunks)))


def test_chunks_overlap_by_whole_sentences(tokenizer) -> None:
    sentences = [f"Fact {i} is stated in this short sentence." for i in range(40)]
    document = Document(doc_id="d2", text=" ".join(sentences))
    chunks = Chunker(tokenizer, max_tokens=50, overlap_tokens=20).chunk(document, "c")
    for previous, current in zip(chunks, chunks[1:]):
        assert current.start < previous.end, "consecutive chunks must overlap"
        assert current.start > previous.start, "chunks must move forward"
        assert document.text[current.start - 1] == " ", "a chunk starts at a sentence boundary"


def test_long_sentence_is_cut_at_word_pieces(tokenizer) -> None:
    document = Document(doc_id="d3", text=" ".join(["word"] * 500) + ".")
    chunks = Chunker(tokenizer, max_tokens=100, overlap_tokens=10).chunk(document, "c")
    assert len(chunks) >= 5
    assert all(c.n_tokens <= 100 for c in chunks)
    assert all(document.text[c.start:c.end] == c.text for c in chunks)
    assert chunks[-1].end == len(document.text)


def test_chunk_ids_are_stable(tokenizer) -> None:
    document = Document(doc_id="d4", text="One sentence. Another sentence.")
    chunker = Chunker(tokenizer, max_tokens=50, overlap_tokens=10)
    assert [c.chunk_id for c in chunker.chunk(document, "c")] == [c.chunk_id for c in chunker.chunk(document, "c")]
    assert chunker.chunk(document, "c")[0].chunk_id != chunker.chunk(document, "other")[0].chunk_id


def test_overlap_must_be_smaller_than_window(tokenizer) -> None:
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(tokenizer, max_tokens=32, overlap_tokens=32)
