"""Tests of PIKE-RAG decomposition and answering.

Parsing and fallback cases use a scripted backend (the LLMBackend protocol with fixed
replies), because malformed, truncated and empty output must be exact. The end-to-end
test answers on the bundled SciFact sample with the real local GGUF model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from expertrag.errors import LLMError
from expertrag.knowledge_base import KnowledgeBase
from expertrag.rag.answerer import Answer, Answerer, Citation
from expertrag.rag.decompose import Decomposer, parse_sub_questions, rule_based_decomposition
from expertrag.rag.pike import PikeAnswerer, compose_passages, substitute_answers
from expertrag.retrievers.hits import Hit
from tests.conftest import SAMPLE_COLLECTION


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


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"sub_questions": ["Who directed Alien?", "Where was #1 born?"]}', ["Who directed Alien?", "Where was #1 born?"]),
        ('```json\n{"sub_questions": ["Who directed Alien", "Where was #1 born"]}\n```',
         ["Who directed Alien?", "Where was #1 born?"]),
        ('Sure! {"sub_questions": ["Who directed Alien?",]} Hope this helps.', ["Who directed Alien?"]),
        ('{"sub_questions": ["Who directed Alien?", "Where was #1 b', ["Who directed Alien?"]),
        ('{"questions": [{"question": "Who directed Alien?"}, {"question": "Where was #1 born?"}]}',
         ["Who directed Alien?", "Where was #1 born?"]),
        ("1. Who directed Alien?\n2. Where was #1 born?", ["Who directed Alien?", "Where was #1 born?"]),
        ('{"sub_questions": ["Who  directed\\nAlien?", "who directed alien?", "Where was #1 born?"]}',
         ["Who directed Alien?", "Where was #1 born?"]),
        ('{"sub_questions": ["Where was #2 born?", "Who directed Alien?", "What is #1?"]}', ["Who directed Alien?"]),
    ],
    ids=["valid", "fenced", "prose-trailing-comma", "truncated", "other-shape", "numbered-lines", "duplicates",
         "forward-reference"],
)
def test_parse_sub_questions_cases(raw: str, expected: list[str]) -> None:
    assert parse_sub_questions(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "I cannot help with that.", '{"sub_questions": []}', '{"sub_questions": ["Who dir', '{"sub_questions": [3, null]}'],
    ids=["empty", "blank", "prose", "empty-list", "truncated-first", "wrong-types"],
)
def test_parse_sub_questions_unusable(raw: str) -> None:
    with pytest.raises(LLMError):
        parse_sub_questions(raw)


def test_parse_sub_questions_cap() -> None:
    raw = '{"sub_questions": ["A?", "B?", "C?", "D?", "E?"]}'
    assert parse_sub_questions(raw, max_sub_questions=3) == ["A?", "B?", "C?"]


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Who directed Alien and when was it released?", ["Who directed Alien?", "When was it released?"]),
        ("Who is the spouse of the director of Alien?", ["What is the director of Alien?", "Who is the spouse of #1?"]),
        ("What is the capital of the country where Ada Lovelace was born?",
         ["Where was Ada Lovelace born?", "What is the capital of #1?"]),
        ("Who founded the company that makes the iPhone?", ["Which company makes the iPhone?", "Who founded #1?"]),
        ("When did the person who founded Tesla die?", ["Who founded Tesla?", "When did #1 die?"]),
        ("What does ADAR1 form a complex with?", ["What does ADAR1 form a complex with?"]),
    ],
)
def test_rule_based_decomposition(question: str, expected: list[str]) -> None:
    assert rule_based_decomposition(question) == expected


@pytest.mark.parametrize(
    "reply",
    ["", "not json at all", '{"sub_questions": ["Who dire', '{"answer": 42}', LLMError("server down")],
    ids=["empty", "garbage", "truncated", "wrong-object", "backend-error"],
)
def test_decomposer_falls_back_to_rules(reply: str | Exception) -> None:
    decomposer = Decomposer(ScriptedBackend(reply))
    result = decomposer.decompose("Who is the spouse of the director of Alien?")

    assert result.method == "rules"
    assert result.sub_questions == ["What is the director of Alien?", "Who is the spouse of #1?"]
    assert len(result.notes) == 1
    assert "rules" in result.notes[0]


def test_decomposer_uses_llm_reply() -> None:
    backend = ScriptedBackend('{"sub_questions": ["Who directed Alien?", "Where was #1 born?"]}')
    result = Decomposer(backend).decompose("Where was the director of Alien born?")

    assert result.method == "llm"
    assert result.sub_questions == ["Who directed Alien?", "Where was #1 born?"]
    assert result.notes == []
    assert "Where was the director of Alien born?" in backend.prompts[0]


def test_decomposer_without_backend() -> None:
    result = Decomposer(None).decompose("What does ADAR1 form a complex with?")
    assert result.method == "none"
    assert result.sub_questions == ["What does ADAR1 form a complex with?"]


# --------------------------------------------------------------------------- substitution


def test_substitute_answers() -> None:
    earlier = [
        Answer("Who directed Alien?", "Ridley Scott.", True),
        Answer("Which film?", "The film Alien was directed by Ridley Scott in 1979.", True),
        Answer("Who wrote it?", "Not found in the knowledge base.", False),
    ]
    assert substitute_answers("Where was #1 born?", earlier) == ("Where was Ridley Scott born?", [])
    assert substitute_answers("Where was #2 shot?", earlier) == (
        "Where was #2 shot? (#2: The film Alien was directed by Ridley Scott in 1979.)", [])
    assert substitute_answers("Where was #3 born?", earlier) == ("Where was (Who wrote it) born?", [3])
    assert substitute_answers("What is #4?", earlier) == ("What is #4?", [4])


def test_compose_passages_cited_first() -> None:
    def hit(chunk_id: str) -> Hit:
        return Hit(chunk_id, "d", "c", "", f"text {chunk_id}", 0, 10, 1.0)

    first = Answer("q1?", "a1", True, hits=[hit("x"), hit("y")],
                   citations=[Citation(1, "y", "d", "c", 0, 5, "text")])
    second = Answer("q2?", "not found", False, hits=[hit("z"), hit("x")])
    assert [h.chunk_id for h in compose_passages([first, second])] == ["y", "x", "z"]


# --------------------------------------------------------------------------- flow on the sample KB


def sample_retrieve(kb: KnowledgeBase) -> Callable[[str, int], list[Hit]]:
    return lambda question, k: kb.retrieve(question, SAMPLE_COLLECTION, k, "dense")


def test_pike_flow_scripted(sample_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend(
        '{"sub_questions": ["What does ADAR1 form a complex with?", "What does #1 regulate?"]}',
        '{"answer": "Dicer", "citations": [1]}',
        '{"answer": "Dicer regulates RNA interference.", "citations": [1]}',
        '{"answer": "ADAR1 forms a complex with Dicer, which regulates RNA interference.", "citations": [1, 2]}',
    )
    pike = PikeAnswerer(Answerer(backend), sample_retrieve(sample_kb))
    result = pike.answer("What does the partner of ADAR1 regulate?", k=2)

    assert result.found
    assert result.answer == "ADAR1 forms a complex with Dicer, which regulates RNA interference."
    assert [sub["question"] for sub in result.sub_questions] == [
        "What does ADAR1 form a complex with?", "What does Dicer regulate?"]
    assert [sub["answer"] for sub in result.sub_questions] == ["Dicer", "Dicer regulates RNA interference."]
    assert "What does Dicer regulate?" in backend.prompts[2]
    assert "1. What does ADAR1 form a complex with? -> Dicer" in backend.prompts[3]
    assert [c.number for c in result.citations] == [1, 2]
    for citation in result.citations:
        assert sample_kb.chunk(citation.chunk_id) is not None
    assert result.notes[0] == "decomposed by llm into 2 sub-questions"


def test_pike_compose_failure_degrades(sample_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend(
        '{"sub_questions": ["What does ADAR1 form a complex with?", "What does #1 regulate?"]}',
        '{"answer": "Dicer", "citations": [1]}',
        LLMError("timed out"),
        "garbage that is not JSON",
    )
    pike = PikeAnswerer(Answerer(backend), sample_retrieve(sample_kb))
    result = pike.answer("What does the partner of ADAR1 regulate?", k=2)

    assert result.found
    assert result.answer == "Dicer"
    assert result.sub_questions[1]["found"] is False
    assert "the LLM call failed (timed out), so this sub-question was skipped" in result.sub_questions[1]["notes"]
    assert "sub-question 2 was skipped because its LLM call failed (timed out)" in result.notes
    assert any("compose step failed" in note for note in result.notes)
    assert result.citations
    cited_in_first = {c["chunk_id"] for c in result.sub_questions[0]["citations"]}
    assert {c.chunk_id for c in result.citations} == cited_in_first


def test_pike_all_sub_questions_fail(sample_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend("", LLMError("connection refused"), LLMError("connection refused"))
    pike = PikeAnswerer(Answerer(backend), sample_retrieve(sample_kb))
    with pytest.raises(LLMError, match="All 2 sub-questions failed"):
        pike.answer("What does ADAR1 form a complex with and what does Dicer regulate?", k=2)


def test_pike_single_question_skips_compose(sample_kb: KnowledgeBase) -> None:
    backend = ScriptedBackend(
        '{"sub_questions": ["What does ADAR1 form a complex with?"]}',
        '{"answer": "ADAR1 forms a complex with Dicer.", "citations": [1]}',
    )
    pike = PikeAnswerer(Answerer(backend), sample_retrieve(sample_kb))
    result = pike.answer("What does ADAR1 form a complex with?", k=2)

    assert result.answer == "ADAR1 forms a complex with Dicer."
    assert len(backend.prompts) == 2
    assert len(result.sub_questions) == 1


@pytest.mark.llm
def test_pike_end_to_end_local_model(sample_kb: KnowledgeBase) -> None:
    question = "What does ADAR1 form a complex with, and what does that complex do to RNA interference?"
    result = sample_kb.answer_in_mode(question, "pike", SAMPLE_COLLECTION, k=2, retriever="dense")

    assert result.sub_questions
    assert len(result.sub_questions) <= sample_kb.settings.pike_max_sub_questions
    assert result.notes[0].startswith("decomposed by ")
    for sub in result.sub_questions:
        assert sub["question"].endswith("?")
        for citation in sub["citations"]:
            assert sample_kb.chunk(citation["chunk_id"]) is not None
    for citation in result.citations:
        chunk = sample_kb.chunk(citation.chunk_id)
        assert chunk is not None
        document = sample_kb.store.document_text(citation.collection, citation.doc_id)
        assert document[citation.start:citation.end] == citation.quote
    payload = result.to_dict()
    assert payload["sub_questions"] == result.sub_questions
    assert payload["communities"] == []


def test_cli_query_invalid_mode(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from expertrag.cli import app

    result = CliRunner().invoke(app, ["query", "What?", "--kb", str(tmp_path / "kb"), "--mode", "drift"])
    assert result.exit_code == 2
    assert "Invalid --mode 'drift': use local, global or pike" in result.output
