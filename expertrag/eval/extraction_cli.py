"""Body of ``expertrag eval extraction``: build the extractor, score it and print or write the result."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from expertrag.eval.extraction import create_extractor, evaluate_extraction, format_result
from expertrag.eval.extraction_data import dataset_name
from expertrag.eval.extraction_schema import DatasetSchema
from expertrag.settings import Settings


def run_extraction_command(
    dataset_dir: Path,
    extractor_name: str,
    limit: int | None,
    split: str,
    schema_path: Path | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Score ``extractor_name`` on a data set split and print the report, or its JSON with ``as_json``."""
    from expertrag.atomic import atomic_write_bytes

    settings = Settings()
    schema = DatasetSchema.load(schema_path) if schema_path else DatasetSchema.for_dataset(dataset_name(dataset_dir))
    extractor = create_extractor(extractor_name, settings, schema)
    result = evaluate_extraction(dataset_dir, extractor, split=split, limit=limit, schema=schema)
    payload = result.to_dict()
    if out is not None:
        atomic_write_bytes(out, json.dumps(payload, indent=2).encode("utf-8"))
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        typer.echo(format_result(result))
