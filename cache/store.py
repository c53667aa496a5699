"""The embedding cache: a directory with one sub-directory per fingerprint.

::

    <cache>/writers/<writer>/            each writer's own stat index and failure ledger
                                         (all fingerprints; see writers, catalogs)
    <cache>/<fingerprint id>/fingerprint.json
    <cache>/<fingerprint id>/shards/*.h5  immutable shards of (key, embedding) rows
    <cache>/<fingerprint id>/keyindex/    key -> (shard, row), on disk (see key_index)

Many processes on many hosts may write one cache at once: each writes only files of its own
(its catalog, shards named after it, uniquely named key index runs). Reading never needs a
lock: a store is a snapshot of the shards published when it was opened.
The same key in two shards (two runs embedding the same image at once, or a compaction under
way) is read from the newer shard.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from headstart import __version__
from headstart.atomic import write_text_atomic
from headstart.cache.catalogs import LEGACY_CATALOG, CatalogSet, catalog_paths
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.key_index import (
    INDEX_DIRECTORY,
    KeyIndex,
    open_key_index,
    split_locations,
)
from headstart.cache.keys import KEY_DTYPE, KeySet, file_key
from headstart.cache.shards import (
    RowLayout,
    as_float32,
    copy_rows,
    read_rows_at,
    read_shard_keys,
    read_shard_rows,
    row_layout,
)
from headstart.cache.writers import WriterSlot, claim_writer
from headstart.errors import HeadstartError

__all__ = ["EmbeddingCache", "EmbeddingChunk", "FingerprintStore", "SeenKeys", "StalePlacement"]

_FINGERPRINT_FILE = "fingerprint.json"
_SNAPSHOT_TRIES = 5


class StalePlacement(OSError):
    """A shard that placed rows has gone since (a compaction replaced it): read them by key."""


@dataclass(frozen=True)
class EmbeddingChunk:
    """A block of rows: content keys and their float32 embeddings (and paths when known)."""

    keys: np.ndarray
    embeddings: np.ndarray
    paths: list[str] | None = None
    labels: list[str | None] | None = None


class EmbeddingCache:
    """A cache directory.

    Example:
        >>> cache = EmbeddingCache(".headstart")  # doctest: +SKIP
        >>> store = cache.open("6f1c")            # a fingerprint id or a unique prefix
        >>> X = store.load_files(["photos/cat.jpg", "photos/dog.jpg"])
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise HeadstartError(f"{str(root)!r} is a file; a cache is a directory")
        self._writer: WriterSlot | None = None

    @property
    def catalog_path(self) -> Path:
        """The single catalog of a cache made before each writer had its own (read, never
        written); :meth:`catalog_paths` lists them all."""
        return self.root / LEGACY_CATALOG

    def catalog_paths(self) -> list[Path]:
        """Every catalog of this cache: the one from before writers, then each writer's."""
        return catalog_paths(self.root)

    def catalog(self) -> CatalogSet:
        """Every writer's catalog read as one; writes go to this process's own, made (and
        its writer slot claimed) on the first write, and freed when the view that made it
        closes."""
        return CatalogSet(self.root, self.writer, self.release_writer)

    def writer(self) -> WriterSlot:
        """This process's writer identity for the cache (claimed on first use): it names the
        shards the process publishes and the catalog it records in."""
        if self._writer is None or not self._writer.held:
            self._writer = claim_writer(self.root)
        return self._writer

    @property
    def holds_writer(self) -> bool:
        """Whether this process holds a writer slot for the cache now."""
        return self._writer is not None and self._writer.held

    def release_writer(self) -> None:
        """Mark this process's writer finished and free its slot (a later write claims one
        again)."""
        if self._writer is not None:
            self._writer.release()

    def fingerprints(self) -> list[Fingerprint]:
        """Every fingerprint with a directory in this cache, sorted by id."""
        found = []
        if self.root.is_dir():
            for directory in sorted(self.root.iterdir()):
                record = directory / _FINGERPRINT_FILE
                if record.is_file():
                    document = json.loads(record.read_text())
                    found.append(Fingerprint.from_dict(document, check_id=False))
        return found

    def find(self, prefix: str | None = None) -> Fingerprint:
        """The fingerprint whose id starts with ``prefix`` (or the only one, when None)."""
        candidates = [fp for fp in self.fingerprints() if fp.id.startswith(prefix or "")]
        if len(candidates) == 1:
            return candidates[0]
        ids = ", ".join(fp.id for fp in self.fingerprints()) or "none"
        if not candidates:
            what = f"no fingerprint {prefix!r}" if prefix else "no embeddings"
            raise HeadstartError(f"{what} in cache {str(self.root)!r} (it has: {ids})")
        raise HeadstartError(
            f"cache {str(self.root)!r} holds several fingerprints; pick one of {ids}"
        )

    def open(self, fingerprint: Fingerprint | str | None = None) -> FingerprintStore:
        """A read view of one fingerprint's embeddings (by record, id prefix, or the only one)."""
        if not isinstance(fingerprint, Fingerprint):
            fingerprint = self.find(fingerprint)
        return FingerprintStore(self, fingerprint)

    def create(self, fingerprint: Fingerprint) -> FingerprintStore:
        """Open a fingerprint's store, making its directory and ``fingerprint.json`` if new."""
        directory = self.root / fingerprint.id
        record = directory / _FINGERPRINT_FILE
        if not record.exists():
            directory.mkdir(parents=True, exist_ok=True)
            document = {
                **fingerprint.to_dict(),
                "created_unix": time.time(),
                "versions": {
                    "headstart": __version__,
                    "python": platform.python_version(),
                    "h5py": h5py.__version__,
                },
            }
            write_text_atomic(record, json.dumps(document, indent=2, sort_keys=True) + "\n")
        return FingerprintStore(self, fingerprint)


class FingerprintStore:
    """The embeddings of one fingerprint, indexed by content key through the on-disk key index
    (:mod:`headstart.cache.key_index`): opening costs the same at any size, and lookups read
    only the index pages they need."""

    def __init__(self, cache: EmbeddingCache, fingerprint: Fingerprint) -> None:
        self.cache = cache
        self.fingerprint = fingerprint
        self.directory = cache.root / fingerprint.id
        self.unreadable: dict[Path, str] = {}  # damaged shards, with the reason
        self._index: KeyIndex | None = None
        # Byte layout of each shard read by position (shards never change once published).
        self._layouts: dict[str, RowLayout | None] = {}
        self.refresh()

    @property
    def shards_directory(self) -> Path:
        return self.directory / "shards"

    def refresh(self) -> None:
        """See the shards published since this view was taken (by other runs, or a compaction):
        the key index is brought up to date with them first."""
        if not self.shards_directory.is_dir():
            self._index = None
            self.unreadable, self.dim = {}, None
            return
        self._index = open_key_index(self.shards_directory, self.directory / INDEX_DIRECTORY)
        # A damaged shard (a disk fault, a bad copy) costs only its rows: they count as missing,
        # so the next extract embeds those images again; the file stays for inspection.
        self.unreadable = {
            self.shards_directory / name: reason for name, reason in self._index.unreadable.items()
        }
        self.dim = self._index.dim

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else 0

    @property
    def shards(self) -> list[Path]:
        """Readable shards, newest first."""
        if self._index is None:
            return []
        return [self.shards_directory / name for name in reversed(self._index.shard_names)]

    def shard_sizes(self) -> dict[Path, int]:
        """Rows of each readable shard, newest first."""
        if self._index is None:
            return {}
        sizes = zip(self._index.shard_names, self._index.shard_rows, strict=True)
        return {self.shards_directory / name: rows for name, rows in reversed(list(sizes))}

    def served_rows(self, shard: Path, keys: np.ndarray) -> np.ndarray:
        """Which of a shard's rows (its ``keys``, in row order) readers are served from: a key
        stored twice is read from one copy only (the newest)."""
        if self._index is None:
            return np.zeros(len(keys), dtype=bool)
        number = self._index.shard_names.index(shard.name)
        return _served_by(self._index, number, keys)

    def seen_keys(self) -> SeenKeys:
        """A membership test over this store and the keys a run adds to it as it goes."""
        return SeenKeys(self)

    def contains(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, KEY_DTYPE)
        if self._index is None:
            return np.zeros(len(keys), dtype=bool)
        return self._index.contains(keys)

    def iter_sorted_keys(self, block_rows: int = 65536) -> Iterator[np.ndarray]:
        """Every key once, in sorted order, ``block_rows`` at a time."""
        if self._index is not None:
            yield from self._index.iter_sorted_keys(block_rows)

    def get(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Embeddings of ``keys`` in the given order, float32 (n, dim)."""
        keys = np.asarray(keys, KEY_DTYPE)
        for _ in range(_SNAPSHOT_TRIES - 1):
            try:
                return self._get(keys)
            except OSError:
                if not self._shards_vanished():
                    raise
                self.refresh()  # a compaction replaced shards since this view was taken
        return self._get(keys)

    def _shards_vanished(self) -> bool:
        return any(not path.exists() for path in self.shards)

    def _get(self, keys: np.ndarray) -> np.ndarray:
        found, locations = self.place(keys)
        if not found.all():
            missing = keys[~found][0].decode()
            raise HeadstartError(
                f"{int((~found).sum())} of {len(keys)} keys are not in fingerprint "
                f"{self.fingerprint.id} (first: {missing}); run `headstart extract` on them first"
            )
        return self.read_placed(self.shard_names, locations)

    @property
    def shard_names(self) -> list[str]:
        """The shards of this view, by the numbers :meth:`place` gives them."""
        return self._index.shard_names if self._index is not None else []

    def place(self, keys: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, location) of each key in this view: a location (int64) names a shard of
        :attr:`shard_names` and a row, for :meth:`read_placed`. A job that reads the same rows
        pass after pass places them once instead of searching the key index every pass."""
        keys = np.asarray(keys, KEY_DTYPE)
        if self._index is None:
            return np.zeros(len(keys), dtype=bool), np.full(len(keys), -1, np.int64)
        return self._index.locations(keys)

    def read_placed(self, shard_names: Sequence[str], locations: np.ndarray) -> np.ndarray:
        """Embeddings at ``locations`` (from :meth:`place` under a view whose shards were
        ``shard_names``), in the given order, float32. Raises :class:`StalePlacement` when one
        of those shards has gone since."""
        shard_of, row_of = split_locations(locations)
        out = np.empty((len(shard_of), self.dim or 0), dtype=np.float32)
        by_shard = np.argsort(shard_of, kind="stable")
        starts = np.flatnonzero(np.diff(shard_of[by_shard], prepend=-1))
        for where in np.split(by_shard, starts[1:]) if len(shard_of) else []:
            name = shard_names[shard_of[where[0]]]
            rows = self._read_rows(name, row_of[where])
            first, last = int(where[0]), int(where[-1])
            if last - first + 1 == len(where):  # in shard order: convert straight into place
                copy_rows(out[first : last + 1], rows)
            else:
                out[where] = as_float32(rows)
        return out

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        path = self.shards_directory / name
        try:
            if name not in self._layouts:
                self._layouts[name] = row_layout(path)
            layout = self._layouts[name]
            if layout is None:
                return read_shard_rows(path, rows)
            return read_rows_at(path, layout, rows)
        except OSError as error:
            if not path.exists():
                raise StalePlacement(f"shard {name} was replaced") from error
            raise

    def iter_chunks(self) -> Iterator[EmbeddingChunk]:
        """Every embedding once, one shard at a time (memory bounded by the largest shard).

        If a compaction replaces shards meanwhile, the view is refreshed and the keys not yet
        yielded are read from the new shards: a key was yielded when the view it was read under
        placed it in a shard already read.
        """
        done: list[tuple[KeyIndex, set[int]]] = []  # earlier views, and the shards read in each
        while self._index is not None:
            index, read = self._index, set()
            done.append((index, read))
            try:
                for number in reversed(range(len(index.shard_names))):
                    path = self.shards_directory / index.shard_names[number]
                    keys = read_shard_keys(path)
                    fresh = _served_by(index, number, keys)
                    for earlier, earlier_read in done[:-1]:
                        fresh &= ~_placed_in(earlier, earlier_read, keys)
                    if fresh.any():
                        rows = np.flatnonzero(fresh)
                        vectors = as_float32(read_shard_rows(path, rows))
                    # Counted as read only once its rows are in hand: a shard that vanishes
                    # between its keys and its rows is read again under the next view.
                    read.add(number)
                    if fresh.any():
                        yield EmbeddingChunk(keys=keys[rows], embeddings=vectors)
                return
            except OSError:
                if not self._shards_vanished():
                    raise
                self.refresh()

    def resolve_keys(self, paths: Sequence[str]) -> list[str]:
        """Content keys of files: from the stat index when unchanged, else by hashing them."""
        absolute = [os.path.abspath(p) for p in paths]
        with self.cache.catalog() as catalog:
            known = catalog.lookup(absolute)
        keys = []
        for path in absolute:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise HeadstartError(f"cannot read {path}: {exc.strerror}") from None
            entry = known.get(path)
            if entry is not None and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns):
                keys.append(entry.key)
            else:
                keys.append(file_key(path))
        return keys

    def load_files(self, paths: Sequence[str]) -> np.ndarray:
        """Embeddings of image files, in order, float32 (n, dim)."""
        return self.get(self.resolve_keys(paths))

    def iter_files(self, paths: Sequence[str], chunk_rows: int = 65536) -> Iterator[EmbeddingChunk]:
        """Like :meth:`load_files`, ``chunk_rows`` files at a time."""
        for start in range(0, len(paths), chunk_rows):
            part = list(paths[start : start + chunk_rows])
            keys = self.resolve_keys(part)
            yield EmbeddingChunk(np.asarray(keys, KEY_DTYPE), self.get(keys), paths=part)


def _served_by(index: KeyIndex, number: int, keys: np.ndarray) -> np.ndarray:
    """Which rows of shard ``number`` (its ``keys`` in row order) ``index`` reads keys from."""
    _, shard_of, row_of = index.locate(keys)
    return (shard_of == number) & (row_of == np.arange(len(keys)))


def _placed_in(index: KeyIndex, shard_numbers: set[int], keys: np.ndarray) -> np.ndarray:
    """Which ``keys`` ``index`` places in one of ``shard_numbers``."""
    _, shard_of, _ = index.locate(keys)
    return np.isin(shard_of, np.fromiter(shard_numbers, np.int32, len(shard_numbers)))


class SeenKeys:
    """Which keys a store holds or a run has just embedded (``contains``/``add``, as
    :class:`KeySet`), without holding the store's keys: the run's own additions are kept in
    memory only until the shards holding them are published and indexed."""

    _REFRESH_AT = 1 << 18

    def __init__(self, store: FingerprintStore) -> None:
        self._store = store
        self._recent = KeySet()
        self._added = 0

    def contains(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, KEY_DTYPE)
        return self._store.contains(keys) | self._recent.contains(keys)

    def add(self, keys: np.ndarray) -> None:
        self._recent.add(keys)
        self._added += len(keys)
        if self._added >= self._REFRESH_AT:
            # Most of these are in published shards by now: index those, keep the rest.
            self._store.refresh()
            recent = self._recent.sorted_keys()
            self._recent = KeySet(recent[~self._store.contains(recent)])
            self._added = len(self._recent)
