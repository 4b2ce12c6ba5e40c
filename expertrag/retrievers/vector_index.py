"""FAISS vector index of one collection's chunks, written atomically beside its id map.

Vectors are unit length, so inner product is cosine similarity. Collections up to
``exact_max`` vectors get an exact flat index; larger ones an HNSW graph.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expertrag.atomic import atomic_write_bytes
from expertrag.errors import KnowledgeBaseError

logger = logging.getLogger(__name__)


@dataclass
class VectorIndex:
    """A FAISS index and the chunk id of each of its rows."""

    index: object
    chunk_ids: list[str]
    kind: str

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        chunk_ids: list[str],
        exact_max: int = 200_000,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 256,
    ) -> "VectorIndex":
        """Build an exact index, or HNSW when there are more than ``exact_max`` vectors."""
        import faiss

        if len(chunk_ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(chunk_ids)} chunk ids")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dimension = vectors.shape[1]
        if len(vectors) > exact_max:
            index = faiss.IndexHNSWFlat(dimension, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            kind = "hnsw"
        else:
            index = faiss.IndexFlatIP(dimension)
            kind = "flat"
        index.add(vectors)
        return cls(index=_to_gpu_if_available(index), chunk_ids=list(chunk_ids), kind=kind)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Return (scores, chunk ids) of the ``k`` nearest chunks of each query row."""
        k = min(k, len(self.chunk_ids))
        if k == 0:
            return np.zeros((len(queries), 0), dtype=np.float32), [[] for _ in range(len(queries))]
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[attr-defined]
        ids = [[self.chunk_ids[r] for r in row if r >= 0] for row in rows]
        return scores, ids

    def save(self, path: Path, fingerprint: str = "") -> None:
        """Write the index and its id map into one file, replaced atomically.

        ``fingerprint`` identifies the chunk set the index was built from, so a reader
        can tell a stale index from a current one.
        """
        import faiss

        header = json.dumps({"kind": self.kind, "fingerprint": fingerprint, "chunk_ids": self.chunk_ids}).encode()
        payload = faiss.serialize_index(_to_cpu(self.index)).tobytes()
        atomic_write_bytes(path, len(header).to_bytes(8, "little") + header + payload)

    @classmethod
    def load(cls, path: Path) -> tuple["VectorIndex", str]:
        """Read an index written by :meth:`save`; return it with its fingerprint."""
        import faiss

        try:
            data = path.read_bytes()
            header_size = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8 : 8 + header_size])
            index = faiss.deserialize_index(np.frombuffer(data[8 + header_size :], dtype=np.uint8))
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise KnowledgeBaseError(f"Cannot read the vector index {path}: {error}") from None
        if index.ntotal != len(meta["chunk_ids"]):
            raise KnowledgeBaseError(f"Vector index {path} has {index.ntotal} vectors but {len(meta['chunk_ids'])} ids")
        return cls(index=_to_gpu_if_available(index), chunk_ids=meta["chunk_ids"], kind=meta["kind"]), meta["fingerprint"]


def _to_gpu_if_available(index: object) -> object:
    """Move a flat index to GPU 0 when the GPU build of FAISS finds a GPU; HNSW stays on the CPU."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index
    if not isinstance(index, faiss.IndexFlat):
        return index
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index)


def _to_cpu(index: object) -> object:
    import faiss

    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        return faiss.index_gpu_to_cpu(index)
    return index
