"""Content keys (SHA-256 of the file bytes, hex) and a sorted, growable set of them.

Keys live in NumPy ``S64`` arrays rather than Python sets: 64 bytes per image instead of ~150,
which is what keeps a million-image cache in bounded memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

import numpy as np

__all__ = ["KEY_DTYPE", "KeyMembership", "KeySet", "content_key", "file_key"]

KEY_DTYPE = np.dtype("S64")
_READ_BLOCK = 1 << 20


def content_key(data: bytes) -> str:
    """The cache key of a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def file_key(path: str) -> str:
    """The cache key of a file on disk, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class KeyMembership(Protocol):
    """What a run asks of the keys it has seen: a set in memory, or a store's key index."""

    def contains(self, keys: np.ndarray) -> np.ndarray: ...

    def add(self, keys: np.ndarray) -> None: ...


class KeySet:
    """A set of keys kept as one sorted array plus a small buffer of recent additions."""

    _MERGE_AT = 65536

    def __init__(self, keys: Iterable[str] | np.ndarray = ()) -> None:
        self._sorted = np.unique(_as_keys(keys))
        self._recent: set[bytes] = set()

    def __len__(self) -> int:
        self._merge()
        return len(self._sorted)

    def __contains__(self, key: str | bytes) -> bool:
        return bool(self.contains(np.asarray([key], KEY_DTYPE))[0])

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``keys`` (an ``S64`` array) are in the set."""
        keys = _as_keys(keys)
        found = np.zeros(len(keys), dtype=bool)
        if len(self._sorted):
            pos = np.searchsorted(self._sorted, keys).clip(max=len(self._sorted) - 1)
            found = self._sorted[pos] == keys
        if self._recent:
            found |= np.fromiter((k in self._recent for k in keys.tolist()), bool, len(keys))
        return found

    def sorted_keys(self) -> np.ndarray:
        """Every key of the set, sorted."""
        self._merge()
        return self._sorted.copy()

    def add(self, keys: np.ndarray | Iterable[str]) -> None:
        self._recent.update(_as_keys(keys).tolist())
        if len(self._recent) >= self._MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        if self._recent:
            recent = np.fromiter(self._recent, KEY_DTYPE, len(self._recent))
            self._sorted = np.union1d(self._sorted, recent)
            self._recent.clear()


def _as_keys(keys: np.ndarray | Iterable[str | bytes]) -> np.ndarray:
    if not isinstance(keys, np.ndarray):
        keys = list(keys)
    return np.asarray(keys, KEY_DTYPE)
