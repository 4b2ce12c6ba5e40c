"""A disk cache of text embeddings, keyed by the encoder and the exact texts."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.retrievers.encoder import Encoder

logger = logging.getLogger(__name__)


def encode_cached(encoder: Encoder, texts: list[str], cache_dir: Path | None, show_progress: bool = False) -> np.ndarray:
    """Encode ``texts``, reusing a matrix saved by an earlier call with the same encoder and texts."""
    if cache_dir is None:
        return encoder.encode(texts, show_progress)
    digest = hashlib.sha256(f"{encoder.path}\x1e{encoder.max_seq_length}".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x1f")
    path = cache_dir / "embeddings" / f"{digest.hexdigest()[:40]}.npy"
    if path.exists():
        vectors = np.load(path)
        if vectors.shape[0] == len(texts):
            logger.info("Loaded %d cached embeddings from %s", len(texts), path)
            return vectors
    vectors = encoder.encode(texts, show_progress)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    atomic_write_bytes(path, buffer.getvalue())
    return vectors
