"""expertrag: retrieval and knowledge-graph augmented generation over domain corpora."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["KnowledgeBase", "Settings", "__version__"]

if TYPE_CHECKING:
    from expertrag.knowledge_base import KnowledgeBase
    from expertrag.settings import Settings


def __getattr__(name: str) -> object:
    """Import the heavy modules only when their names are first used."""
    if name == "KnowledgeBase":
        from expertrag.knowledge_base import KnowledgeBase

        return KnowledgeBase
    if name == "Settings":
        from expertrag.settings import Settings

        return Settings
    raise AttributeError(f"module 'expertrag' has no attribute {name!r}")
