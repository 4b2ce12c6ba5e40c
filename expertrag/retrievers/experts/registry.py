"""A folder of experts: one sub-folder per expert, written atomically.

Layout of ``<root>/<name>/``::

    adapter_config.json        LoRA config (PEFT's layout)
    adapter_model.safetensors  LoRA factors (PEFT's layout)
    expert.json                kind, base encoder, training config, data hashes, metrics
    queries.jsonl              training and validation queries with their relevant documents
    units/NN.npz               per domain: base vectors (float16) of the units its queries search,
                               and the teacher targets of those queries

The queries and unit vectors let the router score any expert on this expert's domain
without the original dataset. A knowledge base keeps its experts in ``<kb>/experts``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.retrievers.experts.adapter import BASE_EXPERT, CONFIG_FILE, WEIGHTS_FILE, LoraWeights
from expertrag.retrievers.experts.data import TrainingData
from expertrag.retrievers.experts.errors import AdapterLoadError, ExpertError, ExpertNotFoundError
from expertrag.retrievers.experts.teacher import TeacherTargets
from expertrag.retrievers.experts.training import TrainedExpert

logger = logging.getLogger(__name__)

METADATA_FILE = "expert.json"
REJECTIONS_FILE = "_rejections.json"
QUERIES_FILE = "queries.jsonl"
UNITS_FOLDER = "units"
FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EXPERTS_FOLDER = "experts"
"""Folder inside a knowledge base that contains its experts; every collection of the knowledge base uses them."""


def check_expert_name(name: str) -> str:
    """Return ``name`` when it can name an expert folder; raise ExpertError otherwise."""
    if not NAME_PATTERN.match(name) or name == BASE_EXPERT:
        raise ExpertError(f"Invalid expert name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit, and not {BASE_EXPERT!r}")
    return name


@dataclass
class ExpertInfo:
    """The metadata in one expert's ``expert.json``, or the error that made it unreadable."""

    name: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def kind(self) -> str:
        """``domain`` or ``multitask``."""
        return str(self.metadata.get("kind", "domain"))

    @property
    def usable(self) -> bool:
        """True when the metadata could be read."""
        return self.error is None

    def summary(self) -> dict[str, Any]:
        """Return the fields ``experts list`` prints."""
        metrics = self.metadata.get("metrics", {})
        validation = metrics.get("validation_ndcg@10", {})
        return {
            "name": self.name,
            "kind": self.kind if self.usable else None,
            "domains": [d.get("name") for d in self.metadata.get("domains", [])],
            "validation_base": validation.get("base"),
            "validation_expert": validation.get("expert"),
            "training_seconds": metrics.get("training_seconds"),
            "error": self.error,
        }


class ExpertRegistry:
    """The experts stored under one folder.

    Example::

        registry = ExpertRegistry(kb_path / "experts")
        registry.add(train_expert("scifact", data, encoder))
        [info.name for info in registry.list()]
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        """Return the names of all expert folders, readable or not."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))

    def list(self, include_unreadable: bool = False) -> list[ExpertInfo]:
        """Return every expert. Unreadable ones are left out with a logged warning, unless ``include_unreadable``."""
        infos = []
        for name in self.names():
            info = self._read_info(name)
            if info.error and not include_unreadable:
                logger.warning("Skipping expert %r in %s: %s", name, self.root, info.error)
                continue
            infos.append(info)
        return infos

    def get(self, name: str) -> ExpertInfo:
        """Return one expert's metadata.

        Raises:
            ExpertNotFoundError: no folder of that name exists.
            AdapterLoadError: the folder exists but ``expert.json`` cannot be read.
        """
        if name not in self.names():
            known = ", ".join(self.names()) or "none"
            raise ExpertNotFoundError(f"Expert {name!r} not found in {self.root} (experts: {known})")
        info = self._read_info(name)
        if info.error:
            raise AdapterLoadError(info.error)
        return info

    def _read_info(self, name: str) -> ExpertInfo:
        path = self.root / name
        metadata_path = path / METADATA_FILE
        try:
            metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ExpertInfo(name, path, error=f"{metadata_path} is missing")
        except (OSError, ValueError) as error:
            return ExpertInfo(name, path, error=f"{metadata_path} is unreadable: {error}")
        if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
            return ExpertInfo(name, path, error=f"{metadata_path} is not an expert.json of format {FORMAT_VERSION}")
        return ExpertInfo(name, path, metadata)

    def load_weights(self, name: str) -> LoraWeights:
        """Read an expert's adapter and check it against the fingerprint in ``expert.json``.

        Raises:
            ExpertNotFoundError, AdapterLoadError: the expert is missing, unreadable or corrupt.
        """
        info = self.get(name)
        weights = LoraWeights.load(info.path)
        expected = info.metadata.get("adapter_sha256")
        if expected and weights.fingerprint() != expected:
            raise AdapterLoadError(f"The adapter in {info.path} does not match the sha256 recorded in "
                                   f"{METADATA_FILE}; the files are corrupt or were replaced: retrain the expert")
        return weights

    def load_domains(self, name: str) -> list[TrainingData]:
        """Return the expert's queries (training and validation) per domain, over the stored unit vectors.

        Raises:
            AdapterLoadError: the queries or unit files are missing or unreadable.
        """
        info = self.get(name)
        queries_path = info.path / QUERIES_FILE
        by_domain: dict[str, tuple[dict[str, str], dict[str, dict[str, int]]]] = {}
        try:
            with queries_path.open(encoding="utf-8") as handle:
                for line in handle:
                    record = json.loads(line)
                    texts, qrels = by_domain.setdefault(record["domain"], ({}, {}))
                    texts[record["id"]] = record["text"]
                    qrels[record["id"]] = {str(k): int(v) for k, v in record["relevant"].items()}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AdapterLoadError(f"Unreadable expert queries {queries_path}: {error}") from None

        domains = []
        for domain in info.metadata.get("domains", []):
            domain_name = domain["name"]
            units_path = info.path / UNITS_FOLDER / f"{domain['file']}.npz"
            try:
                with np.load(units_path) as stored:
                    unit_ids = [str(x) for x in stored["unit_ids"]]
                    unit_documents = [str(x) for x in stored["unit_documents"]]
                    vectors = stored["vectors"].astype(np.float32)
                    teacher = None
                    if "teacher_rows" in stored.files:
                        teacher = TeacherTargets([str(x) for x in stored["teacher_query_ids"]],
                                                 stored["teacher_rows"].astype(np.int64),
                                                 stored["teacher_scores"].astype(np.float32),
                                                 float(stored["teacher_bm25_weight"]))
            except (OSError, ValueError, KeyError) as error:
                raise AdapterLoadError(f"Unreadable unit vectors {units_path}: {error}") from None
            texts, qrels = by_domain.get(domain_name, ({}, {}))
            domains.append(TrainingData(domain_name, unit_ids, unit_documents, vectors, texts, qrels,
                                        domain.get("source", {}), teacher))
        return domains

    def add(self, expert: TrainedExpert, overwrite: bool = False) -> ExpertInfo:
        """Write a trained expert into ``<root>/<name>``; the folder appears complete or not at all.

        Raises:
            ExpertError: the name is invalid, or taken and ``overwrite`` is False.
        """
        name = check_expert_name(expert.name)
        target = self.root / name
        if target.exists() and not overwrite:
            raise ExpertError(f"Expert {name!r} already exists in {self.root}: remove it first or pass overwrite")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        try:
            self._write(expert, staging)
            if target.exists():
                retired = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}.old."))
                os.replace(target, retired / name)
                os.replace(staging, target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("Registered expert %r in %s", name, target)
        self._forget_rejection(name)
        return self.get(name)

    def _forget_rejection(self, name: str) -> None:
        """Drop an older rejection of ``name``, which a registered expert of that name makes stale."""
        records = self.rejections()
        if records.pop(name, None) is not None:
            self._write_rejections(records)

    def _write(self, expert: TrainedExpert, folder: Path) -> None:
        expert.weights.save(folder, expert.config.get("encoder", ""))
        domains = []
        (folder / UNITS_FOLDER).mkdir()
        with (folder / QUERIES_FILE).open("w", encoding="utf-8") as handle:
            for index, (training, validation) in enumerate(zip(expert.training, expert.validation)):
                for role, data in (("train", training), ("validation", validation)):
                    for query_id in sorted(data.qrels):
                        record = {"domain": training.name, "role": role, "id": query_id,
                                  "text": data.queries[query_id], "relevant": data.qrels[query_id]}
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                file_stem = f"{index:02d}"
                arrays: dict[str, np.ndarray] = {}
                if training.teacher is not None and validation.teacher is not None:
                    teacher = training.teacher.concat(validation.teacher)
                    arrays = {"teacher_query_ids": np.array(teacher.query_ids), "teacher_rows": teacher.rows.astype(np.int32),
                              "teacher_scores": teacher.scores.astype(np.float32),
                              "teacher_bm25_weight": np.array(teacher.bm25_weight)}
                np.savez(folder / UNITS_FOLDER / f"{file_stem}.npz", unit_ids=np.array(training.unit_ids),
                         unit_documents=np.array(training.unit_documents),
                         vectors=training.unit_vectors.astype(np.float16), **arrays)
                domains.append({"name": training.name, "file": file_stem, "source": training.source,
                                "training_queries": len(training.qrels), "validation_queries": len(validation.qrels),
                                "units": len(training.unit_ids),
                                "training_sha256": training.content_hash(),
                                "validation_sha256": validation.content_hash()})
        metadata = {
            "format_version": FORMAT_VERSION,
            "name": expert.name,
            "kind": expert.kind,
            "encoder": expert.config.get("encoder", ""),
            "created_at": time.time(),
            "adapter_sha256": expert.weights.fingerprint(),
            "data_sha256": expert.data_hash,
            "domains": domains,
            "training": expert.config,
            "metrics": expert.metrics,
            "files": [CONFIG_FILE, WEIGHTS_FILE, QUERIES_FILE],
        }
        (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False), encoding="utf-8")

    def record_rejection(self, name: str, report: dict[str, Any]) -> None:
        """Store why training rejected an expert in ``<root>/_rejections.json``, replacing an older record."""
        records = self.rejections()
        records[name] = {**report, "recorded_at": time.time()}
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_rejections(records)

    def _write_rejections(self, records: dict[str, Any]) -> None:
        atomic_write_bytes(self.root / REJECTIONS_FILE, json.dumps(records, indent=2, default=str).encode("utf-8"))

    def rejections(self) -> dict[str, Any]:
        """Return {name: report} of the experts that training rejected; an unreadable file counts as none."""
        path = self.root / REJECTIONS_FILE
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("Ignoring unreadable %s: %s", path, error)
            return {}
        return records if isinstance(records, dict) else {}

    def remove(self, name: str) -> None:
        """Delete an expert's folder; the other experts are untouched.

        Raises:
            ExpertNotFoundError: no folder of that name exists.
        """
        if name not in self.names():
            raise ExpertNotFoundError(f"Expert {name!r} not found in {self.root}")
        retired = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}.removed."))
        os.replace(self.root / name, retired / name)
        shutil.rmtree(retired, ignore_errors=True)
        logger.info("Removed expert %r from %s", name, self.root)
