"""Buffer embeddings and publish them as shards, by size or by age.

Publishing often bounds what a crash can lose (the rows still in the buffer); publishing rarely
keeps shards large. Both limits are settings; ``close`` publishes the rest, and runs on Ctrl-C.
Shards are named after this process's writer id (see :mod:`headstart.cache.writers`), so that
no two writers ever write one file and each compacts only its own.
"""

from __future__ import annotations

import time

import numpy as np

from headstart.cache.keys import KEY_DTYPE
from headstart.cache.shards import publish_shard
from headstart.cache.store import FingerprintStore

__all__ = ["ShardWriter"]


class ShardWriter:
    """Collects (keys, embeddings) blocks and publishes shards of at most ``shard_rows`` rows.

    Example:
        >>> with ShardWriter(store, shard_rows=4096, max_age_s=30) as writer:  # doctest: +SKIP
        ...     writer.add(keys, vectors)
    """

    def __init__(
        self,
        store: FingerprintStore,
        *,
        shard_rows: int = 4096,
        max_age_s: float = 30.0,
        dtype: str = "float16",
    ) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be positive, got {shard_rows}")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        self.store = store
        self.shard_rows = shard_rows
        self.max_age_s = max_age_s
        self.dtype = dtype
        self.published_rows = 0
        self.published_shards = 0
        self._keys: list[np.ndarray] = []
        self._vectors: list[np.ndarray] = []
        self._buffered = 0
        self._oldest: float | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, keys: np.ndarray, embeddings: np.ndarray) -> None:
        """Buffer rows; publish whenever the buffer is full or older than ``max_age_s``."""
        if len(keys) == 0:
            return
        self._keys.append(np.asarray(keys, KEY_DTYPE))
        self._vectors.append(np.asarray(embeddings, np.float32))
        self._buffered += len(keys)
        if self._oldest is None:
            self._oldest = time.monotonic()
        while self._buffered >= self.shard_rows:
            self._publish(self.shard_rows)
        if self._buffered and time.monotonic() - self._oldest >= self.max_age_s:
            self._publish(self._buffered)

    def close(self) -> None:
        """Publish whatever is buffered."""
        if self._buffered:
            self._publish(self._buffered)

    def _publish(self, rows: int) -> None:
        keys = np.concatenate(self._keys)
        vectors = np.concatenate(self._vectors)
        publish_shard(
            self.store.shards_directory,
            self.store.fingerprint.id,
            keys[:rows],
            vectors[:rows],
            dtype=self.dtype,
            writer=self.store.cache.writer().id,
        )
        self.published_rows += rows
        self.published_shards += 1
        rest = len(keys) - rows
        self._keys = [keys[rows:]] if rest else []
        self._vectors = [vectors[rows:]] if rest else []
        self._buffered = rest
        self._oldest = time.monotonic() if rest else None
