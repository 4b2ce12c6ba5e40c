"""Exception hierarchy of expertrag: callers catch these, not ``Exception``."""

from __future__ import annotations


class ExpertRAGError(Exception):
    """Base class of every error that expertrag raises on purpose."""


class InputError(ExpertRAGError):
    """Invalid user input: a corpus file, a record, an option value."""


class CorpusFormatError(InputError):
    """A corpus record that cannot be read, with the file and line that hold it."""

    def __init__(self, path: str, line: int | None, problem: str, hint: str = "") -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"line {line} of {path}" if line is not None else path
        message = f"{problem} ({where})"
        if hint:
            message = f"{message}. {hint}"
        super().__init__(message)


class KnowledgeBaseError(ExpertRAGError):
    """A knowledge base that is missing, empty, of another format version or corrupt."""


class KnowledgeBaseNotFoundError(KnowledgeBaseError):
    """No knowledge base exists at the given path."""


class EmptyKnowledgeBaseError(KnowledgeBaseError):
    """The knowledge base (or the requested collection) contains no chunks yet."""


class CollectionNotFoundError(KnowledgeBaseError):
    """The requested collection does not exist in the knowledge base."""


class ModelError(ExpertRAGError):
    """A model (encoder, spaCy pipeline, GGUF file) that cannot be found or loaded."""


class LLMError(ExpertRAGError):
    """An LLM backend that failed, timed out or returned output that cannot be used."""


class GraphStoreError(ExpertRAGError):
    """A graph store (rdflib file, Neo4j server) that cannot be read or written."""
