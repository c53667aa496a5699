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

_DUPLICATE_BLOCK = 4096


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
            # Row -> (list, offset): 8 bytes a row, so rows can be read back in order.
            faiss.extract_index_ivf(self.cpu_index).make_direct_map()
        total = self.cpu_index.ntotal
        pairs = []
        # A block of vectors at a time, reconstructed from the (mapped) index and searched.
        for start in range(0, total, _DUPLICATE_BLOCK):
            block = self.cpu_index.reconstruct_n(start, min(_DUPLICATE_BLOCK, total - start))
            similarities, rows = self.index.search(block, min(k + 1, total))
            for offset, (sims, neighbors) in enumerate(zip(similarities, rows, strict=True)):
                i = start + offset
                pairs.extend(
                    (i, int(j), float(sim))
                    for sim, j in zip(sims, neighbors, strict=True)
                    if j > i and sim >= threshold
                )
        return sorted(pairs, key=lambda pair: -pair[2])
