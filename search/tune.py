"""Tuning an approximate index against exact search.

``nprobe`` (IVF) or ``efSearch`` (HNSW) is raised until recall@10 against exact search, on a
sample of the indexed vectors as queries, reaches the target, or stops improving; exact
neighbours are merged block by block, so tuning never holds every vector.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from headstart.search.exact import exact_search
from headstart.search.spec import COMPRESSED_KINDS, IVF_KINDS, IndexSpec
from headstart.search.vectors import Vectors

__all__ = ["apply_spec", "exact_neighbors", "tune"]

_RECALL_QUERIES = 500
# Compressed vectors cap recall below 1, so tuning them stops once doubling nprobe gains less
# than this: probing every list past the cap would only slow each search.
_RECALL_PLATEAU = 0.005


def exact_neighbors(vectors: Vectors, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows of ``queries`` over all vectors, merged block by block."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start, block in vectors.blocks():
        similarities, rows = exact_search(block, queries, min(k, len(block)))
        if rows.shape[1] < k:  # a short last block: pad so the heap sees k columns
            pad = k - rows.shape[1]
            similarities = np.pad(similarities, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        heap.add_result(similarities, np.where(rows >= 0, rows + start, -1))
    heap.finalize()
    return heap.I


def tune(
    index, vectors: Vectors, spec: IndexSpec, target: float, seed: int
) -> tuple[IndexSpec, float]:
    """(tuned spec, its recall@10); ``index`` is left set to the tuned spec."""
    if spec.kind == "flat":
        return spec, 1.0
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(
        rng.choice(vectors.count, size=min(vectors.count, _RECALL_QUERIES), replace=False)
    )
    queries = vectors.take(rows)
    k = min(10, vectors.count - 1)
    # The queries are indexed items: leave each one's own row out of both lists, so recall
    # counts real neighbors only.
    truth = _without(exact_neighbors(vectors, queries, k + 1), rows, k)
    compressed = spec.kind in COMPRESSED_KINDS
    best: tuple[IndexSpec, float] | None = None
    for value in (2**i for i in range(17)):
        if spec.kind == "hnsw":
            spec = replace(spec, ef_search=max(value, 16))
        else:
            spec = replace(spec, nprobe=min(value, spec.nlist))
        apply_spec(index, spec)
        recall = _recall(_without(index.search(queries, k + 1)[1], rows, k), truth)
        if compressed and best is not None and recall - best[1] < _RECALL_PLATEAU:
            apply_spec(index, best[0])  # no better for twice the work: keep the cheaper setting
            return best
        best = (spec, recall)
        if recall >= target or (spec.kind != "hnsw" and spec.nprobe >= spec.nlist) or value >= 4096:
            return best
    return best


def apply_spec(index, spec: IndexSpec) -> None:
    """Set the search-time parameters ``spec`` records on a FAISS index."""
    import faiss

    if spec.kind in IVF_KINDS:
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        index.hnsw.efSearch = spec.ef_search


def _without(found: np.ndarray, own_rows: np.ndarray, k: int) -> np.ndarray:
    return np.array(
        [
            [r for r in row if r != own][:k]
            for row, own in zip(found.tolist(), own_rows, strict=True)
        ]
    )


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size
