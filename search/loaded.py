"""A saved index, loaded and ready to search, with its items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.errors import HeadstartError
from headstart.search.exact import l2_normalize
from headstart.search.items import ItemTable
from headstart.search.spec import IVF_KINDS, IndexSpec
from headstart.search.thumbnails import ThumbnailStore

__all__ = ["LoadedIndex"]


@dataclass
class LoadedIndex:
    """A saved index, ready to search (on the GPU when FAISS sees one), and its items."""

    index: Any
    cpu_index: Any
    spec: IndexSpec
    fingerprint: Fingerprint
    items: ItemTable  # row -> path, label, key, read from disk when asked
    document: dict[str, Any]
    thumbnails: ThumbnailStore | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of the ``k`` nearest items of each query."""
        queries = l2_normalize(queries)
        if queries.shape[1] != self.index.d:
            raise HeadstartError(
                f"queries have {queries.shape[1]} dimensions, the index {self.index.d}"
            )
        return self.index.search(queries, min(k, self.index.ntotal))

    def near_duplicates(self, threshold: float, k: int = 10) -> list[tuple[int, int, float]]:
        """Pairs (i, j, similarity), i < j, of items at least ``threshold`` similar."""
        import faiss

        if self.spec.kind in IVF_KINDS:
            faiss.extract_index_ivf(self.cpu_index).make_direct_map()
        vectors = self.cpu_index.reconstruct_n(0, self.cpu_index.ntotal)
        pairs = []
        for start in range(0, len(vectors), 4096):
            block = vectors[start : start + 4096]
            similarities, rows = self.index.search(block, min(k + 1, self.index.ntotal))
            for offset, (sims, neighbors) in enumerate(zip(similarities, rows, strict=True)):
                i = start + offset
                pairs.extend(
                    (i, int(j), float(sim))
                    for sim, j in zip(sims, neighbors, strict=True)
                    if j > i and sim >= threshold
                )
        return sorted(pairs, key=lambda pair: -pair[2])
