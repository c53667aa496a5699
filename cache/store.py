"""The embedding cache: a directory with one sub-directory per fingerprint.

::

    <cache>/catalog.sqlite               stat index and failure ledger (all fingerprints)
    <cache>/<fingerprint id>/fingerprint.json
    <cache>/<fingerprint id>/shards/*.h5  immutable shards of (key, embedding) rows

Reading never needs a lock: a store is a snapshot of the shards published when it was opened.
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
from headstart.cache.catalog import FileCatalog
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KEY_DTYPE, KeySet, file_key
from headstart.cache.shards import (
    SHARD_READ_ERRORS,
    as_float32,
    copy_rows,
    read_shard_info,
    read_shard_keys,
    read_shard_rows,
    shard_paths,
)
from headstart.errors import HeadstartError, first_line

__all__ = ["EmbeddingCache", "EmbeddingChunk", "FingerprintStore"]

_FINGERPRINT_FILE = "fingerprint.json"
_SNAPSHOT_TRIES = 5


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

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    def catalog(self) -> FileCatalog:
        return FileCatalog(self.catalog_path)

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
    """The embeddings of one fingerprint, indexed by content key."""

    def __init__(self, cache: EmbeddingCache, fingerprint: Fingerprint) -> None:
        self.cache = cache
        self.fingerprint = fingerprint
        self.directory = cache.root / fingerprint.id
        self.unreadable: dict[Path, str] = {}  # damaged shards, with the reason
        self.refresh()

    @property
    def shards_directory(self) -> Path:
        return self.directory / "shards"

    def refresh(self) -> None:
        """Re-read the list of published shards (and so see what other runs have added)."""
        # List until a listing shows nothing new. A compaction publishes its merged shards
        # before deleting the old ones, so an old shard that vanishes before it is read means
        # the merged shards holding its rows are already there for the next listing.
        read: dict[Path, np.ndarray] = {}
        unreadable: dict[Path, str] = {}
        while new := [
            p for p in shard_paths(self.shards_directory) if p not in read and p not in unreadable
        ]:
            for path in new:
                try:
                    read[path] = read_shard_keys(path)
                except SHARD_READ_ERRORS as exc:
                    if path.exists():
                        unreadable[path] = first_line(exc)
        # A damaged shard (a disk fault, a bad copy) costs only its rows: they count as missing,
        # so the next extract embeds those images again; the file stays for inspection.
        self.unreadable = unreadable
        # Newest first: np.unique keeps the first occurrence, so the newest copy of a key
        # wins. Readers then move to a compaction's merged shards as soon as they see them,
        # and stop touching the shards it is about to delete.
        self._shards = sorted(read, reverse=True)
        per_shard = [read[path] for path in self._shards]
        keys = np.concatenate(per_shard) if per_shard else np.empty(0, KEY_DTYPE)
        shard_ids = np.repeat(
            np.arange(len(per_shard), dtype=np.int32), [len(k) for k in per_shard]
        )
        rows = np.concatenate([np.arange(len(k), dtype=np.int32) for k in per_shard] or [[]])
        self._keys, first = np.unique(keys, return_index=True)
        self._shard_of = shard_ids[first]
        self._row_of = rows[first].astype(np.int32)
        self.dim = read_shard_info(self._shards[0]).dim if self._shards else None

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def shards(self) -> list[Path]:
        return list(self._shards)

    def key_set(self) -> KeySet:
        return KeySet(self._keys)

    def keys(self) -> np.ndarray:
        """All keys, sorted (``S64`` array of hex SHA-256)."""
        return self._keys.copy()

    def contains(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, KEY_DTYPE)
        if not len(self._keys):
            return np.zeros(len(keys), dtype=bool)
        pos = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
        return self._keys[pos] == keys

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
        return any(not path.exists() for path in self._shards)

    def _get(self, keys: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._keys, keys).clip(max=max(len(self._keys) - 1, 0))
        found = self._keys[pos] == keys if len(self._keys) else np.zeros(len(keys), dtype=bool)
        if not found.all():
            missing = keys[~found][0].decode()
            raise HeadstartError(
                f"{int((~found).sum())} of {len(keys)} keys are not in fingerprint "
                f"{self.fingerprint.id} (first: {missing}); run `headstart extract` on them first"
            )
        out = np.empty((len(keys), self.dim or 0), dtype=np.float32)
        shard_of, row_of = self._shard_of[pos], self._row_of[pos]
        by_shard = np.argsort(shard_of, kind="stable")
        starts = np.flatnonzero(np.diff(shard_of[by_shard], prepend=-1))
        for where in np.split(by_shard, starts[1:]) if len(keys) else []:
            path, rows = self._shards[shard_of[where[0]]], row_of[where]
            first, last = int(where[0]), int(where[-1])
            if last - first + 1 == len(where):  # keys in shard order: copy straight into place
                copy_rows(out[first : last + 1], read_shard_rows(path, rows))
            else:
                out[where] = as_float32(read_shard_rows(path, rows))
        return out

    def iter_chunks(self) -> Iterator[EmbeddingChunk]:
        """Every embedding once, one shard at a time (memory bounded by the largest shard).

        If a compaction replaces shards meanwhile, the view is refreshed and the keys not yet
        yielded are read from the new shards.
        """
        done = KeySet()
        while True:
            try:
                for shard_id, path in enumerate(self._shards):
                    rows = np.sort(self._row_of[self._shard_of == shard_id])
                    keys = read_shard_keys(path)[rows] if len(rows) else rows
                    fresh = ~done.contains(keys) if len(keys) else np.zeros(0, dtype=bool)
                    if fresh.any():
                        vectors = as_float32(read_shard_rows(path, rows[fresh]))
                        done.add(keys[fresh])
                        yield EmbeddingChunk(keys=keys[fresh], embeddings=vectors)
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
