"""Errors of the expert machinery; all are :class:`~expertrag.errors.ExpertRAGError` subclasses."""

from __future__ import annotations

from expertrag.errors import ExpertRAGError


class ExpertError(ExpertRAGError):
    """An expert that cannot be trained, stored, found or loaded."""


class ExpertNotFoundError(ExpertError):
    """No expert of the requested name exists in the registry."""


class AdapterLoadError(ExpertError):
    """An expert folder whose adapter files are missing, unreadable or do not fit the base encoder."""


class ExpertRejectedError(ExpertError):
    """A trained expert that did not beat the base encoder on its validation queries, so it was not registered."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}
