"""Exact inner-product search and the L2 normalisation every index and similarity head shares."""

from __future__ import annotations

import numpy as np

__all__ = ["exact_search", "l2_normalize"]


def l2_normalize(X: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def exact_search(
    database: np.ndarray, queries: np.ndarray, k: int, *, gpu: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: (similarities, indices), each (n_queries, k), best first.

    ``gpu=None`` uses the GPUs FAISS sees, if any.
    """
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    if gpu is None:
        gpu = faiss.get_num_gpus() > 0
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
