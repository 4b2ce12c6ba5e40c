"""The schema-guided LLM extractor configured from a data set's evaluation schema."""

from __future__ import annotations

from expertrag.eval.extraction_schema import DatasetSchema
from expertrag.kg_build.llm_extraction import ExtractionSchema, LLMExtractor, RelationPattern
from expertrag.rag.llm import create_backend
from expertrag.settings import Settings

# Relations named in the prompt. Re-DocRED has 96 and WebNLG 201, which with the text would
# not fit a 4096-token context, so the first ones in schema order (by frequency) are kept.
MAX_PROMPT_RELATIONS = 40


def extraction_schema_of(schema: DatasetSchema, max_relations: int = MAX_PROMPT_RELATIONS) -> ExtractionSchema:
    """Return the LLM schema of a data set: its entity types and its first ``max_relations`` relations."""
    relations = tuple(
        RelationPattern(spec.name, spec.head, spec.tail, spec.description)
        for spec in list(schema.relations.values())[:max_relations]
    )
    return ExtractionSchema({name: spec.description for name, spec in schema.entity_types.items()}, relations)


def llm_extractor_for(settings: Settings, schema: DatasetSchema | None) -> LLMExtractor:
    """Create an LLM extractor on the configured backend, guided by ``schema``. Raises ValueError without a schema."""
    if schema is None:
        raise ValueError("The llm extractor needs a data set schema: pass --schema or use a data set with a bundled schema.")
    return LLMExtractor(create_backend(settings), extraction_schema_of(schema), max_tokens=settings.llm_extraction_max_tokens)
