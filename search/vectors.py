"""The vectors an index is built from, a block at a time (FAISS contrib's block iterator idea)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from headstart.cache.store import FingerprintStore
from headstart.search.exact import l2_normalize

__all__ = ["Vectors"]


class Vectors:
    """L2-normalised vectors for an index build, a block at a time: from an array in memory,
    or streamed from a cache store by key."""

    def __init__(
        self,
        source: np.ndarray | FingerprintStore,
        keys: np.ndarray | None = None,
        block_rows: int = 65536,
    ) -> None:
        self._source, self._keys, self.block_rows = source, keys, block_rows
        if isinstance(source, np.ndarray):
            self.count, self.dim = source.shape
        else:
            self.count, self.dim = len(keys), int(source.dim or 0)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if isinstance(self._source, np.ndarray):
            return l2_normalize(self._source[rows])
        return l2_normalize(self._source.get(self._keys[rows]))

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.count, self.block_rows):
            yield start, self.take(np.arange(start, min(start + self.block_rows, self.count)))
