"""Multi-hop QA evaluation: passage recall@k against the supporting passages, answer EM and F1.

Answers are scored with the SQuAD normalization (lower case, no punctuation, no articles
"a"/"an"/"the", single spaces), taking the best score over a question's acceptable
answers. Passage recall@k is the fraction of a question's supporting passages among the
first k distinct documents retrieved.
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expertrag.errors import CorpusFormatError, InputError

logger = logging.getLogger(__name__)

RECALL_DEPTHS = (2, 5)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


@dataclass
class QaQuestion:
    """One multi-hop question with its acceptable answers and supporting passage ids."""

    question_id: str
    question: str
    answers: list[str]
    supporting_ids: list[str]


@dataclass
class QaDataset:
    """Questions of one split of a multi-hop QA folder (questions.jsonl or questions_train.jsonl)."""

    name: str
    folder: Path
    split: str
    questions: list[QaQuestion]

    @classmethod
    def load(cls, folder: str | Path, split: str = "test", limit: int | None = None) -> "QaDataset":
        """Read ``questions.jsonl`` (split ``test``) or ``questions_train.jsonl`` (split ``train``)."""
        folder = Path(folder)
        names = {"test": "questions.jsonl", "train": "questions_train.jsonl"}
        if split not in names:
            raise InputError(f"Unknown QA split {split!r}: use test or train")
        path = folder / names[split]
        if not path.is_file():
            raise InputError(f"{path} not found: a multi-hop QA folder needs corpus.jsonl and {names[split]}")
        questions = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    questions.append(QaQuestion(str(record["id"]), str(record["question"]),
                                                [str(a) for a in record["answers"]],
                                                [str(s) for s in record["supporting_ids"]]))
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise CorpusFormatError(path, number, f"invalid question record ({error})",
                                            "each line needs id, question, answers and supporting_ids") from error
                if limit is not None and len(questions) >= limit:
                    break
        if not questions:
            raise InputError(f"{path} has no questions")
        return cls(folder.name, folder, split, questions)


def normalize_answer(text: str) -> str:
    """Return the SQuAD-normalized form of an answer."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """Return 1.0 when the normalized prediction equals a normalized answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(answer) for answer in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Return the best token-overlap F1 between the prediction and any answer."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        if common == 0:
            continue
        precision, recall = common / len(predicted), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def passage_recall(retrieved_doc_ids: Sequence[str], supporting_ids: Sequence[str], k: int) -> float:
    """Return the fraction of ``supporting_ids`` among the first ``k`` distinct retrieved documents."""
    if not supporting_ids:
        return 0.0
    top = list(dict.fromkeys(retrieved_doc_ids))[:k]
    return len(set(top) & set(supporting_ids)) / len(set(supporting_ids))


@dataclass
class QaRecord:
    """Evaluation record of one question: retrieved documents, the generated answer and its scores."""

    question_id: str
    retrieved: list[str]
    recall: dict[str, float]
    retrieval_s: float
    answer: str | None = None
    exact_match: float | None = None
    f1: float | None = None
    answer_s: float | None = None
    citations_resolved: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class QaResult:
    """Means and per-question records of one retriever and answer mode on one QA split."""

    dataset: str
    split: str
    retriever: str
    mode: str | None
    questions: int
    metrics: dict[str, float]
    records: list[QaRecord] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict."""
        return asdict(self)


RetrieveFn = Callable[[str], tuple[list[str], list[str]]]
"""Question → (retrieved document ids best first, notes)."""
AnswerFn = Callable[[str], tuple[str, bool, list[str]]]
"""Question → (answer text, whether every citation resolves to a stored chunk, notes)."""


def evaluate_qa(dataset: QaDataset, retriever: str, retrieve: RetrieveFn, answer: AnswerFn | None = None,
                mode: str | None = None) -> QaResult:
    """Run every question through ``retrieve`` (and ``answer`` when given) and score them."""
    records: list[QaRecord] = []
    for number, question in enumerate(dataset.questions, start=1):
        started = time.perf_counter()
        doc_ids, notes = retrieve(question.question)
        retrieval_s = time.perf_counter() - started
        recall = {f"recall@{k}": passage_recall(doc_ids, question.supporting_ids, k) for k in RECALL_DEPTHS}
        record = QaRecord(question.question_id, list(dict.fromkeys(doc_ids))[:10], recall, retrieval_s, notes=notes)
        if answer is not None:
            started = time.perf_counter()
            text, resolved, answer_notes = answer(question.question)
            record.answer_s = time.perf_counter() - started
            record.answer = text
            record.exact_match = exact_match(text, question.answers)
            record.f1 = token_f1(text, question.answers)
            record.citations_resolved = resolved
            record.notes.extend(answer_notes)
        records.append(record)
        if number % 50 == 0:
            logger.info("Scored %d of %d questions", number, len(dataset.questions))
    return QaResult(dataset.name, dataset.split, retriever, mode, len(records), summarize(records), records)


def summarize(records: Sequence[QaRecord]) -> dict[str, float]:
    """Return mean recall, EM, F1 and latency over the records (answer figures only when answered)."""
    count = max(1, len(records))
    metrics = {f"recall@{k}": sum(r.recall[f"recall@{k}"] for r in records) / count for k in RECALL_DEPTHS}
    latencies = sorted(r.retrieval_s for r in records)
    metrics["retrieval_p50_ms"] = 1000 * latencies[len(latencies) // 2] if latencies else 0.0
    answered = [r for r in records if r.answer is not None]
    if answered:
        metrics["exact_match"] = sum(r.exact_match or 0.0 for r in answered) / len(answered)
        metrics["f1"] = sum(r.f1 or 0.0 for r in answered) / len(answered)
        metrics["answer_mean_s"] = sum(r.answer_s or 0.0 for r in answered) / len(answered)
        metrics["citations_resolved"] = sum(bool(r.citations_resolved) for r in answered) / len(answered)
    metrics["fallback_to_dense"] = sum(any("fell back" in note for note in r.notes) for r in records) / count
    return metrics


def markdown_table(results: Sequence[QaResult]) -> str:
    """Return the results as one Markdown table, a row per dataset, retriever and mode."""
    lines = ["| dataset | split | retriever | mode | questions | R@2 | R@5 | EM | F1 | retrieval p50 ms | answer s | no link |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        m = result.metrics
        answer_figures = (f"{m['exact_match']:.3f} | {m['f1']:.3f}" if "exact_match" in m else "– | –")
        answer_time = f"{m['answer_mean_s']:.1f}" if "answer_mean_s" in m else "–"
        lines.append(
            f"| {result.dataset} | {result.split} | {result.retriever} | {result.mode or '–'} | {result.questions} | "
            f"{m['recall@2']:.3f} | {m['recall@5']:.3f} | {answer_figures} | {m['retrieval_p50_ms']:.1f} | "
            f"{answer_time} | {m['fallback_to_dense']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def citations_resolve(kb: Any, answer: Any) -> bool:
    """Return True when every citation of ``answer`` (and of its sub-questions) names a stored chunk
    whose document text at the cited span equals the quote."""
    citations = list(answer.citations)
    for sub_question in getattr(answer, "sub_questions", []) or []:
        citations.extend(sub_question.get("citations", []))
    for citation in citations:
        fields = citation if isinstance(citation, dict) else citation.__dict__
        chunk = kb.chunk(fields["chunk_id"])
        if chunk is None:
            return False
        document = kb.store.document_text(chunk["collection"], chunk["doc_id"])
        if document is None or document[fields["start"]:fields["end"]] != fields["quote"]:
            return False
    return True


def evaluate_kb_qa(kb: Any, collection: str, dataset: QaDataset, retriever: str, mode: str | None,
                   depth: int = 20) -> QaResult:
    """Evaluate ``retriever`` (and, with ``mode``, answers in that mode) of a knowledge base on ``dataset``.

    Recall counts the documents of the first ``depth`` retrieved chunks; answers use the
    ``top_k`` setting's passages, as ``expertrag query`` does.
    """
    # Questions are encoded in one batch, as an application serving many users would, and each
    # question's latency includes its share of that batch.
    started = time.perf_counter()
    texts = [question.question for question in dataset.questions]
    vectors = dict(zip(texts, kb.encoder.encode(texts))) if retriever != "bm25" else {}
    encode_share = (time.perf_counter() - started) / len(texts)

    def retrieve(question: str) -> tuple[list[str], list[str]]:
        retrieval = kb.retrieval(question, collection, depth, retriever, vectors.get(question))
        return [hit.doc_id for hit in retrieval.hits], list(retrieval.notes)

    def answer(question: str) -> tuple[str, bool, list[str]]:
        result = kb.answer(question, collection, retriever=retriever, mode=mode)
        return (result.answer if result.found else ""), citations_resolve(kb, result), list(result.notes)

    result = evaluate_qa(dataset, retriever, retrieve, answer if mode else None, mode)
    for record in result.records:
        record.retrieval_s += encode_share
    result.metrics = summarize(result.records)
    return result


def write_results(results: Sequence[QaResult], prefix: Path, command: str) -> tuple[Path, Path]:
    """Write the results as ``PREFIX.json`` (with per-question records) and ``PREFIX.md`` (table and command)."""
    from expertrag.atomic import atomic_write_bytes

    json_path, markdown_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    payload = {"command": command, "results": [result.to_dict() for result in results]}
    atomic_write_bytes(json_path, json.dumps(payload, indent=2).encode("utf-8"))
    text = f"# Multi-hop QA\n\nRegenerate with:\n\n```\n{command}\n```\n\n{markdown_table(results)}"
    atomic_write_bytes(markdown_path, text.encode("utf-8"))
    return json_path, markdown_path
