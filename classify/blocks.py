"""Training data as a restartable stream of blocks: (float32 vectors, int class codes).

A solver passes over a source many times, so a source holds no vectors: per row it keeps an
int32 class code in memory, and the row's 64-byte content key and 8-byte location in the
cache's shards in unlinked temporary files beside the cache (read back a block at a time); each
pass reads the float16 vectors of one block from the shards and widens them to float32.
Train, validation and train + validation for a refit are views over it (:meth:`Blocks.take`,
:class:`ChainedBlocks`): no vector is copied to make them.

:class:`ArrayBlocks` gives arrays the same interface, which is how ``fit(X, y)`` users and the
tests reach the streaming code.

Example:
    >>> for X, y in source.blocks():  # doctest: +SKIP
    ...     partial = X.T @ X
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from headstart.cache.keys import KEY_DTYPE
from headstart.cache.store import FingerprintStore, StalePlacement
from headstart.errors import HeadstartError

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "ArrayBlocks",
    "Blocks",
    "CachedBlocks",
    "ChainedBlocks",
    "KeyFile",
    "PlacedKeys",
    "RowFile",
    "as_blocks",
]

DEFAULT_BLOCK_ROWS = 4096  # 8 MB of 512-wide float32 rows; a budget sets its own


class Blocks:
    """A labelled set of rows read a block at a time. ``classes`` are the label names, sorted
    (so a code is the index ``np.unique`` would give); code -1 marks an unlabelled row."""

    classes: np.ndarray
    block_rows: int = DEFAULT_BLOCK_ROWS

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def codes(self) -> np.ndarray:
        """The class code of every row (int32, in row order)."""
        raise NotImplementedError

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(X float32 (b, d), codes int64 (b,)) for consecutive rows, from the start each time."""
        raise NotImplementedError

    def rows(self, which: np.ndarray) -> np.ndarray:
        """The vectors of rows ``which`` (sorted row numbers of this view), float32."""
        raise NotImplementedError

    def take(self, which: np.ndarray) -> Blocks:
        """A view of rows ``which`` (sorted row numbers of this view)."""
        raise NotImplementedError

    def relabel(self, classes: np.ndarray) -> Blocks:
        """The same rows coded against ``classes`` (sorted); labels not among them become -1."""
        raise NotImplementedError

    def with_block_rows(self, rows: int) -> Blocks:
        """The same view, read ``rows`` rows at a time."""
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """Every row's label name (what scoring takes; validation-sized, not the vectors)."""
        codes = self.codes
        if (codes < 0).any():
            raise HeadstartError(f"{int((codes < 0).sum())} rows have no label")
        return np.asarray(self.classes)[codes]

    def read_all(self) -> np.ndarray:
        """Every vector in one float32 array: only for heads that need them all at once, after
        they checked the budget."""
        out = np.empty((len(self), self.dim), np.float32)
        start = 0
        for X, _ in self.blocks():
            out[start : start + len(X)] = X
            start += len(X)
        return out


def _recode(codes: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``codes`` against ``old`` class names, re-expressed against ``new`` (-1 if absent)."""
    new = np.asarray(new)
    position = np.searchsorted(new, old).clip(max=max(len(new) - 1, 0))
    lookup = np.where(len(new) and new[position] == old, position, -1).astype(np.int32)
    lookup = np.append(lookup, np.int32(-1))  # code -1 stays -1
    return lookup[codes]


class ArrayBlocks(Blocks):
    """Arrays seen as blocks (no copy of ``X`` is made)."""

    def __init__(
        self,
        X: np.ndarray,
        codes: np.ndarray,
        classes: np.ndarray,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        self.X = np.ascontiguousarray(X, np.float32)
        self._codes = np.asarray(codes, np.int32)
        self.classes = np.asarray(classes)
        self.block_rows = block_rows

    @classmethod
    def of(cls, X: np.ndarray, y: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> ArrayBlocks:
        classes, codes = np.unique(np.asarray(y), return_inverse=True)
        return cls(X, codes, classes, block_rows)

    def __len__(self) -> int:
        return len(self.X)

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    @property
    def codes(self) -> np.ndarray:
        return self._codes

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.X), self.block_rows):
            stop = start + self.block_rows
            yield self.X[start:stop], self._codes[start:stop].astype(np.int64)

    def rows(self, which: np.ndarray) -> np.ndarray:
        return self.X[which]

    def take(self, which: np.ndarray) -> ArrayBlocks:
        return ArrayBlocks(self.X[which], self._codes[which], self.classes, self.block_rows)

    def relabel(self, classes: np.ndarray) -> ArrayBlocks:
        codes = _recode(self._codes, self.classes, classes)
        return ArrayBlocks(self.X, codes, classes, self.block_rows)

    def with_block_rows(self, rows: int) -> ArrayBlocks:
        return ArrayBlocks(self.X, self._codes, self.classes, rows)

    def read_all(self) -> np.ndarray:
        return self.X


class RowFile:
    """Fixed-width records in a temporary file, read back by row: none of them in memory.
    The file is unlinked as soon as it is open, so nothing is left behind."""

    def __init__(self, dtype: np.dtype, directory: str | os.PathLike[str] | None = None) -> None:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".rows-", suffix=".bin", dir=directory)
        os.unlink(name)
        self.dtype = np.dtype(dtype)
        self._fd = fd
        self.count = 0
        weakref.finalize(self, os.close, fd)

    def append(self, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, self.dtype).tobytes()
        os.pwrite(self._fd, data, self.count * self.dtype.itemsize)
        self.count += len(values)

    def span(self, start: int, stop: int) -> np.ndarray:
        """Records of rows ``start``..``stop`` (exclusive)."""
        size = self.dtype.itemsize
        data = os.pread(self._fd, (stop - start) * size, start * size)
        return np.frombuffer(data, self.dtype)

    def take(self, where: slice | np.ndarray) -> np.ndarray:
        """Records of rows ``where``: a slice (``start:stop``), or sorted row numbers."""
        if isinstance(where, slice):
            return self.span(where.start, min(where.stop, self.count))
        return self.at(where)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Records of rows ``rows`` (sorted): read span by span, never more than a block's span."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.empty(0, self.dtype)
        if rows[-1] - rows[0] + 1 <= 8 * len(rows):  # dense enough: one read, then pick
            return self.span(int(rows[0]), int(rows[-1]) + 1)[rows - rows[0]]
        return np.concatenate([self.span(int(r), int(r) + 1) for r in rows])


class KeyFile(RowFile):
    """Content keys in a :class:`RowFile`: 64 bytes a row on disk, none in memory."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        super().__init__(KEY_DTYPE, directory)


class PlacedKeys:
    """Rows' content keys and where a store's view placed their vectors (a shard and a row;
    see :meth:`~headstart.cache.store.FingerprintStore.place`), both in temporary files.

    A solver reads the same rows pass after pass: searching the key index for every block of
    every pass cost more than reading the vectors, and grew with the size of the cache (an
    8-million-row cache's index is read whole for each block of scattered keys). Placed once,
    a pass reads 8 bytes a row of locations and then the vectors. If a compaction replaces
    the shards meanwhile, the rows are read by key instead."""

    def __init__(self, store: FingerprintStore, directory: str | os.PathLike[str] | None) -> None:
        self.store = store
        self.shard_names = list(store.shard_names)
        self.keys = KeyFile(directory)
        self.locations = RowFile(np.int64, directory)

    @property
    def count(self) -> int:
        return self.keys.count

    def append(self, keys: np.ndarray, locations: np.ndarray) -> None:
        if len(keys) != len(locations):
            raise ValueError(f"{len(keys)} keys with {len(locations)} locations")
        self.keys.append(keys)
        self.locations.append(locations)

    def vectors(self, where: slice | np.ndarray) -> np.ndarray:
        """float32 vectors of rows ``where`` (a slice, or sorted row numbers)."""
        try:
            return self.store.read_placed(self.shard_names, self.locations.take(where))
        except StalePlacement:
            return self.store.get(self.keys.take(where))


class CachedBlocks(Blocks):
    """Rows of a fingerprint's cache: their keys and placements (a :class:`PlacedKeys`) and
    class codes; the vectors are read from the store a block at a time."""

    def __init__(
        self,
        rows: PlacedKeys,
        codes: np.ndarray,
        classes: np.ndarray,
        view: np.ndarray | None = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        self.placed = rows
        self._all_codes = np.asarray(codes, np.int32)
        self.classes = np.asarray(classes)
        self._view = None if view is None else np.asarray(view, np.int64)
        self.block_rows = block_rows

    @property
    def store(self) -> FingerprintStore:
        return self.placed.store

    def __len__(self) -> int:
        return self.placed.count if self._view is None else len(self._view)

    @property
    def dim(self) -> int:
        return int(self.store.dim or 0)

    @property
    def codes(self) -> np.ndarray:
        return self._all_codes if self._view is None else self._all_codes[self._view]

    def _positions(self, start: int, stop: int) -> np.ndarray | slice:
        return slice(start, min(stop, len(self))) if self._view is None else self._view[start:stop]

    def keys_of(self, start: int, stop: int) -> np.ndarray:
        """Content keys of this view's rows ``start``..``stop``."""
        return self.placed.keys.take(self._positions(start, stop))

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), self.block_rows):
            where = self._positions(start, start + self.block_rows)
            # float16 on disk -> float32 here
            yield self.placed.vectors(where), self._all_codes[where].astype(np.int64)

    def rows(self, which: np.ndarray) -> np.ndarray:
        which = np.asarray(which, np.int64)
        return self.placed.vectors(which if self._view is None else self._view[which])

    def take(self, which: np.ndarray) -> CachedBlocks:
        which = np.asarray(which, np.int64)
        view = which if self._view is None else self._view[which]
        return CachedBlocks(self.placed, self._all_codes, self.classes, view, self.block_rows)

    def relabel(self, classes: np.ndarray) -> CachedBlocks:
        codes = _recode(self._all_codes, self.classes, classes)
        return CachedBlocks(self.placed, codes, classes, self._view, self.block_rows)

    def with_block_rows(self, rows: int) -> CachedBlocks:
        return CachedBlocks(self.placed, self._all_codes, self.classes, self._view, rows)


class ChainedBlocks(Blocks):
    """Several sources read one after the other (train, then validation, for a refit), coded
    against the union of their classes; nothing is concatenated but the int32 codes."""

    def __init__(self, parts: Sequence[Blocks]) -> None:
        self.classes = np.unique(np.concatenate([np.asarray(p.classes) for p in parts]))
        self.parts = [part.relabel(self.classes) for part in parts]
        self.block_rows = max(part.block_rows for part in self.parts)

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    @property
    def dim(self) -> int:
        return self.parts[0].dim

    @property
    def codes(self) -> np.ndarray:
        return np.concatenate([part.codes for part in self.parts])

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for part in self.parts:
            yield from part.blocks()

    def rows(self, which: np.ndarray) -> np.ndarray:
        which = np.asarray(which, np.int64)
        out, start = [], 0
        for part in self.parts:
            mine = which[(which >= start) & (which < start + len(part))] - start
            if len(mine):
                out.append(part.rows(mine))
            start += len(part)
        return np.concatenate(out) if out else np.empty((0, self.dim), np.float32)

    def take(self, which: np.ndarray) -> ChainedBlocks:
        which = np.asarray(which, np.int64)
        parts, start = [], 0
        for part in self.parts:
            mine = which[(which >= start) & (which < start + len(part))] - start
            if len(mine):
                parts.append(part.take(mine))
            start += len(part)
        return ChainedBlocks(parts)

    def relabel(self, classes: np.ndarray) -> ChainedBlocks:
        return ChainedBlocks([part.relabel(classes) for part in self.parts])

    def with_block_rows(self, rows: int) -> ChainedBlocks:
        return ChainedBlocks([part.with_block_rows(rows) for part in self.parts])


def as_blocks(X: np.ndarray | Blocks, y: np.ndarray | None = None) -> Blocks:
    """A source as it is, or arrays (X, y) as one."""
    if isinstance(X, Blocks):
        return X
    if y is None:
        raise TypeError("arrays need their labels: as_blocks(X, y)")
    return ArrayBlocks.of(X, y)
