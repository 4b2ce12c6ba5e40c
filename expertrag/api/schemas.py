"""Request and response models of the REST API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

RetrieverName = Literal["dense", "bm25", "hybrid", "graph", "graph+hybrid"]


class QueryRequest(BaseModel):
    """A question to answer from the knowledge base."""

    question: str = Field(min_length=1, max_length=4000, examples=["What does vitamin B12 deficiency do to homocysteine?"])
    collection: str | None = Field(default=None, description="Collection to search; all when omitted.")
    k: int | None = Field(default=None, ge=1, le=50, description="Passages given to the LLM.")
    retriever: RetrieverName = "hybrid"
    router: str | None = Field(
        default=None, max_length=100, examples=["pilot"],
        description="Routing strategy for dense retrieval over the experts in <kb>/experts: pilot, centroid, fusion, "
        "multitask or fixed:NAME. Omitted: the base encoder, and no routing decision in the response.",
    )
    mode: Literal["local", "global", "pike"] = Field(
        default="local",
        description="local: answer from retrieved passages; global: map-reduce over community summaries; "
        "pike: answer sub-questions, then compose.",
    )


class RetrieveRequest(BaseModel):
    """A query to retrieve chunks for."""

    query: str = Field(min_length=1, max_length=4000)
    collection: str | None = None
    k: int = Field(default=10, ge=1, le=1000)
    retriever: RetrieverName = "hybrid"
    router: str | None = Field(
        default=None, max_length=100, examples=["pilot"],
        description="Routing strategy for dense retrieval over the experts in <kb>/experts: pilot, centroid, fusion, "
        "multitask or fixed:NAME. Omitted: the base encoder, and no routing decision in the response.",
    )


class HitModel(BaseModel):
    """A retrieved chunk."""

    chunk_id: str
    doc_id: str
    collection: str
    title: str
    text: str
    start: int
    end: int
    score: float
    ranks: dict[str, int]


class RoutingModel(BaseModel):
    """The expert that encoded the query for dense retrieval, and why the router picked it."""

    expert: str = Field(description="Expert name; 'base' is the base encoder and 'fusion' fuses every candidate's results.")
    strategy: str
    similarities: dict[str, float] = Field(
        description="Similarity of the query to each candidate's pilot embeddings (pilot) or domain centroid "
        "(centroid); empty for fixed, multitask and fusion."
    )
    reason: str


class CitationModel(BaseModel):
    """A cited chunk and its supporting sentence; offsets index the document text."""

    number: int
    chunk_id: str
    doc_id: str
    collection: str
    start: int
    end: int
    quote: str


class FactModel(BaseModel):
    """A graph fact with one chunk that states it."""

    relation_id: str
    subject_id: str
    subject: str
    predicate: str
    object_id: str
    object: str
    chunk_id: str
    start: int
    end: int


class LinkModel(BaseModel):
    """A query span linked to a graph entity, or to a document title (then ``chunk_ids`` is set)."""

    text: str
    start: int
    end: int
    method: Literal["exact", "alias", "title", "embedding"]
    score: float
    entity_id: str | None = None
    name: str | None = None
    chunk_count: int = 0
    chunk_ids: list[str] = []


class PathModel(BaseModel):
    """A shortest relation path between two linked entities."""

    source_id: str
    target_id: str
    steps: list[FactModel] = Field(description="Relations in their stored direction, each with the chunk and span that state it.")


GRAPH_EVIDENCE = "Only the graph retrievers (graph, graph+hybrid) fill this."


class AnswerModel(BaseModel):
    """An answer with its citations and evidence."""

    question: str
    answer: str
    found: bool
    citations: list[CitationModel]
    hits: list[HitModel]
    facts: list[FactModel]
    notes: list[str]
    seconds: float
    sub_questions: list[dict[str, Any]] = Field(
        default=[], description="pike mode: each sub-question with its answer, found flag, citations and notes."
    )
    communities: list[dict[str, Any]] = Field(
        default=[], description="global mode: the communities asked, with partial answers, scores and cited chunk ids."
    )
    routing: RoutingModel | None = Field(default=None, description="The routing decision; null without router.")
    links: list[LinkModel] = Field(default=[], description="Query spans linked to entities or titles. " + GRAPH_EVIDENCE)
    paths: list[PathModel] = Field(default=[], description="Relation paths between linked entities. " + GRAPH_EVIDENCE)


class RetrieveResponse(BaseModel):
    """Retrieved chunks, best first."""

    hits: list[HitModel]
    routing: RoutingModel | None = Field(default=None, description="The routing decision; null without router.")
    links: list[LinkModel] = Field(default=[], description="Query spans linked to entities or titles. " + GRAPH_EVIDENCE)
    paths: list[PathModel] = Field(default=[], description="Relation paths between linked entities. " + GRAPH_EVIDENCE)
    notes: list[str] = Field(default=[], description="What retrieval fell back to, if anything. " + GRAPH_EVIDENCE)


class HealthResponse(BaseModel):
    """Service state: ``ok``, ``empty`` (nothing ingested) or ``missing`` (no knowledge base)."""

    status: Literal["ok", "empty", "missing"]
    knowledge_base: str
    collections: dict[str, dict[str, int]] = {}


class EntityResponse(BaseModel):
    """An entity and the facts whose subject or object it is, at most ``limit`` of them."""

    entity_id: str
    name: str
    label: str
    facts: list[FactModel]
    truncated: bool = Field(description="True when the entity has more facts than were returned.")


class ErrorResponse(BaseModel):
    """An error: a message that says what to do, or for an invalid request body FastAPI's list of field errors."""

    detail: str | list[dict[str, Any]]
