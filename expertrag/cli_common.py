"""Helpers shared by the ``expertrag`` command and its sub-commands."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer


def fail(error: Exception) -> NoReturn:
    """Print ``Error: <message>`` to stderr and exit with status 2."""
    typer.echo(f"Error: {error}", err=True)
    raise typer.Exit(code=2)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON; values JSON cannot hold are printed as strings."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))
