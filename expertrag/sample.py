"""The SciFact sample bundled with the package, used by ``expertrag demo`` and the fast tests."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "sample" / "scifact"
SAMPLE_QUESTION = "What does ADAR1 form a complex with?"
