"""Entity resolution by normalized name and type: mentions with the same key become one entity."""

from __future__ import annotations

import re
import unicodedata

from expertrag.records import content_id

_LEADING_ARTICLE = re.compile(r"^(the|a|an|this|these|those|its|their|our)\s+", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w\s\-+/.%]")
_SPACES = re.compile(r"\s+")

# spaCy labels that name the same kind of thing are resolved together.
LABEL_GROUPS = {"GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "NORP": "NORP", "ORG": "ORG", "PERSON": "PERSON"}


def normalize_name(name: str) -> str:
    """Return the comparison key of an entity name: NFKC, lower case, no article or stray punctuation."""
    text = unicodedata.normalize("NFKC", name).lower().strip()
    text = _LEADING_ARTICLE.sub("", text)
    text = _NON_WORD.sub(" ", text)
    text = _SPACES.sub(" ", text).strip(" .-")
    return text


def entity_key(name: str, label: str) -> tuple[str, str]:
    """Return the (normalized name, label group) pair that identifies an entity."""
    return normalize_name(name), LABEL_GROUPS.get(label, label)


def entity_id_for(name: str, label: str) -> str:
    """Return the entity id shared by every mention with the same normalized name and type."""
    normalized, group = entity_key(name, label)
    return content_id(normalized, group)
