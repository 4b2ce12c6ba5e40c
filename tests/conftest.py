"""Shared fixtures: settings with a private cache, and a knowledge base of the bundled SciFact sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expertrag.knowledge_base import KnowledgeBase
from expertrag.sample import SAMPLE_DIR
from expertrag.settings import Settings
from tests.neo4j_fixture import neo4j_uri  # noqa: F401  (a session fixture shared by every test module)

SAMPLE_COLLECTION = "scifact-sample"


def shared_data_dir() -> Path:
    """The benchmark data folder (EXPERTRAG_DATA_DIR, else ../shared/data beside the repository)."""
    return Settings().data_dir


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose embedding cache lives in a temporary folder; the GGUF cache stays shared."""
    return Settings(cache_dir=Path(os.environ.get("EXPERTRAG_CACHE_DIR", Path.home() / ".cache" / "expertrag")))


@pytest.fixture(scope="session")
def sample_kb_path(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    """A knowledge base with the SciFact sample ingested once per test session; tests must not change it."""
    path = tmp_path_factory.mktemp("sample_kb") / "kb"
    with KnowledgeBase.open(path, settings, create=True) as kb:
        kb.ingest(SAMPLE_DIR, collection=SAMPLE_COLLECTION)
    return path


@pytest.fixture()
def sample_kb(sample_kb_path: Path, settings: Settings) -> KnowledgeBase:
    """The shared sample knowledge base, opened for one test."""
    kb = KnowledgeBase.open(sample_kb_path, settings)
    yield kb
    kb.close()
