"""Answers with citations from the local LLM over the sample knowledge base."""

from __future__ import annotations

import pytest

from expertrag.knowledge_base import KnowledgeBase
from expertrag.rag.answerer import NOT_FOUND_ANSWER, Answerer
from expertrag.retrievers.hits import Hit
from expertrag.sample import SAMPLE_QUESTION


def assert_citations_resolve(kb: KnowledgeBase, answer) -> None:
    for citation in answer.citations:
        chunk = kb.chunk(citation.chunk_id)
        assert chunk is not None, f"cited chunk {citation.chunk_id} is not in the knowledge base"
        document = kb.store.document_text(citation.collection, citation.doc_id)
        assert document is not None
        assert document[citation.start:citation.end] == citation.quote
        assert chunk["start"] <= citation.start < citation.end <= chunk["end"]


@pytest.mark.llm
def test_sample_question_is_answered_with_citations(sample_kb: KnowledgeBase) -> None:
    answer = sample_kb.answer(SAMPLE_QUESTION)
    assert answer.found, answer.notes
    assert "dicer" in answer.answer.lower()
    assert answer.citations
    assert any(c.doc_id == "5953485" for c in answer.citations)
    assert_citations_resolve(sample_kb, answer)


@pytest.mark.llm
def test_question_outside_the_corpus_is_not_found(sample_kb: KnowledgeBase) -> None:
    answer = sample_kb.answer("Which team won the 1998 football World Cup final?")
    assert not answer.found
    assert answer.answer == NOT_FOUND_ANSWER
    assert answer.citations == []


@pytest.mark.llm
def test_unanswerable_question_on_topic_is_not_invented(sample_kb: KnowledgeBase) -> None:
    answer = sample_kb.answer("What is the phone number of the lab that studied ADAR1 and Dicer?")
    assert not answer.found, answer.answer
    assert answer.citations == []


class ScriptedBackend:
    """An LLM stand-in that returns fixed replies, for the answerer's parsing rules only."""

    name = "scripted"

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def complete(self, messages, *, max_tokens=None, json_schema=None, temperature=0.0) -> str:
        return self.reply


HIT = Hit("c1", "d1", "col", "T", "Dicer cleaves pre-miRNA. ADAR1 binds Dicer.", 10, 53, 1.0)


@pytest.mark.parametrize(
    ("reply", "found", "numbers"),
    [
        ('{"answer": "ADAR1 binds Dicer", "citations": [1]}', True, [1]),
        ('{"answer": "ADAR1 binds Dicer", "citations": [7]}', True, [1]),
        ('{"answer": "Something unrelated entirely", "citations": []}', False, []),
        ('{"answer": "NOT_FOUND", "citations": []}', False, []),
        ("not json at all", False, []),
        ('```json\n{"answer": "ADAR1 binds Dicer", "citations": [1,]', True, [1]),
    ],
)
def test_answerer_parsing_rules(reply: str, found: bool, numbers: list[int]) -> None:
    answer = Answerer(ScriptedBackend(reply)).answer("What does ADAR1 bind?", [HIT])
    assert answer.found is found
    assert [c.number for c in answer.citations] == numbers
    for citation in answer.citations:
        assert citation.quote == "ADAR1 binds Dicer."
        assert (citation.start, citation.end) == (10 + 25, 10 + 43)
