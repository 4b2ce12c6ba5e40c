"""The REST API over one knowledge base (FastAPI; OpenAPI docs at ``/docs``)."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from expertrag.api.schemas import (
    AnswerModel,
    EntityResponse,
    ErrorResponse,
    FactModel,
    HealthResponse,
    QueryRequest,
    RetrieveRequest,
    RetrieveResponse,
)
from expertrag.errors import (
    CollectionNotFoundError,
    EmptyKnowledgeBaseError,
    ExpertRAGError,
    InputError,
    KnowledgeBaseNotFoundError,
    LLMError,
)
from expertrag.knowledge_base import KnowledgeBase
from expertrag.retrievers.search import GRAPH_RETRIEVERS
from expertrag.settings import Settings

logger = logging.getLogger(__name__)

STATUS_OF_ERROR: list[tuple[type[ExpertRAGError], int]] = [
    (KnowledgeBaseNotFoundError, 404),
    (CollectionNotFoundError, 404),
    (EmptyKnowledgeBaseError, 409),
    (InputError, 422),
    (LLMError, 502),
]


def create_app(kb_path: str | Path, settings: Settings | None = None) -> FastAPI:
    """Return the API app for the knowledge base at ``kb_path``; the folder may not exist yet."""
    kb_path = Path(kb_path)
    settings = settings or Settings()
    app = FastAPI(title="expertrag", version="0.1.0", description="Retrieval and knowledge-graph augmented answers with citations.")
    lock = threading.Lock()
    opened: dict[str, KnowledgeBase] = {}

    def knowledge_base() -> KnowledgeBase:
        with lock:
            if "kb" not in opened:
                opened["kb"] = KnowledgeBase.open(kb_path, settings)
            return opened["kb"]

    @app.exception_handler(ExpertRAGError)
    async def handle_error(request: Request, error: ExpertRAGError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF_ERROR if isinstance(error, kind)), 500)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, error)
        return JSONResponse(status_code=status, content={"detail": str(error)})

    errors = {code: {"model": ErrorResponse} for code in (404, 409, 422, 502)}

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        """Report whether the knowledge base exists and what it holds."""
        try:
            kb = knowledge_base()
        except KnowledgeBaseNotFoundError:
            return HealthResponse(status="missing", knowledge_base=str(kb_path))
        collections = kb.stats()["collections"]
        has_chunks = any(counts.get("chunks") for counts in collections.values())
        return HealthResponse(status="ok" if has_chunks else "empty", knowledge_base=str(kb_path), collections=collections)

    @app.post("/query", response_model=AnswerModel, responses=errors)
    def query(request: QueryRequest) -> AnswerModel:
        """Answer a question with citations to chunks of the knowledge base."""
        kb = knowledge_base()
        if request.mode == "local" or request.router is not None:
            # answer() rejects a router with another mode, so that request gets a 422.
            answer = kb.answer(request.question, request.collection, request.k, request.retriever,
                               router=request.router, mode=request.mode)
        else:
            answer = kb.answer_in_mode(request.question, request.mode, request.collection, request.k, request.retriever)
        return AnswerModel.model_validate(answer.to_dict())

    @app.post("/retrieve", response_model=RetrieveResponse, responses=errors)
    def retrieve(request: RetrieveRequest) -> RetrieveResponse:
        """Return the best chunks for a query; graph retrievers add entity links, paths and notes."""
        if request.router is None and request.retriever in GRAPH_RETRIEVERS:
            retrieval = knowledge_base().retrieval(request.query, request.collection, request.k, request.retriever)
            return RetrieveResponse.model_validate(retrieval.to_dict())
        hits = knowledge_base().retrieve(request.query, request.collection, request.k, request.retriever,
                                         router=request.router)
        routing = getattr(hits, "routing", None)
        return RetrieveResponse.model_validate({"hits": [hit.to_dict() for hit in hits],
                                                "routing": None if routing is None else routing.to_dict()})

    @app.get("/entities/{entity_id}", response_model=EntityResponse, responses=errors)
    def entity(entity_id: str, limit: int = Query(default=50, ge=1, le=1000, description="Facts to return.")) -> EntityResponse:
        """Return an entity and the facts whose subject or object it is, ordered by relation id."""
        kb = knowledge_base()
        found = kb.store.get_entity(entity_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"Entity {entity_id!r} not found")
        facts = kb.store.facts_about([entity_id], limit=limit + 1)
        return EntityResponse(
            entity_id=found.entity_id,
            name=found.name,
            label=found.label,
            facts=[FactModel.model_validate(asdict(fact)) for fact in facts[:limit]],
            truncated=len(facts) > limit,
        )

    return app
