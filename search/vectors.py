"""The vectors an index is built from, a block at a time (FAISS contrib's block iterator idea)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from headstart.cache.store import FingerprintStore
from headstart.classify.blocks import KeyFile, PlacedKeys
from headstart.search.exact import l2_normalize

__all__ = ["Vectors"]


class Vectors:
    """L2-normalised vectors for an index build, a block at a time: from an array in memory,
    or streamed from a cache store by key (the keys in an array, or in a
    :class:`~headstart.classify.blocks.KeyFile` on disk for a collection of any size)."""

    def __init__(
        self,
        source: np.ndarray | FingerprintStore,
        keys: np.ndarray | KeyFile | PlacedKeys | None = None,
        block_rows: int = 65536,
    ) -> None:
        self._source, self._keys, self.block_rows = source, keys, block_rows
        if isinstance(source, np.ndarray):
            self.count, self.dim = source.shape
        else:
            count = keys.count if isinstance(keys, KeyFile | PlacedKeys) else len(keys)
            self.count, self.dim = count, int(source.dim or 0)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (sorted), normalised."""
        rows = np.asarray(rows)
        if isinstance(self._source, np.ndarray):
            return l2_normalize(self._source[rows])
        # The store hands over a float32 array of its own: normalised where it lies, so a
        # training sample takes its own bytes once, not twice.
        if isinstance(self._keys, PlacedKeys):
            X = self._keys.vectors(rows)
        else:
            keys = self._keys.at(rows) if isinstance(self._keys, KeyFile) else self._keys[rows]
            X = self._source.get(keys)
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return X

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.count, self.block_rows):
            yield start, self.take(np.arange(start, min(start + self.block_rows, self.count)))
