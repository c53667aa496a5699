"""An on-disk index from content key to (shard, row): opening a store costs the same at any size.

::

    <fingerprint>/keyindex/manifest.json      the shards it covers, its runs (newest first), count
    <fingerprint>/keyindex/run-<id>.keys       sorted S64 keys of one run (raw bytes)
    <fingerprint>/keyindex/run-<id>.loc        int64 ``shard number << 32 | row`` of each key

A run indexes the shards that were new when it was written, so an extract that adds a few shards
adds one small run instead of re-sorting every key (a log-structured merge: once there are more
than :data:`MAX_RUNS` runs they are merged into one, a block at a time). A key found in several
runs is read through the newest, as the newest shard holding a key wins.

Memory holds one key of every 1,024 of a run (its fences: 1/16 byte a key). A lookup finds
each key's block of 1,024 through them and reads that block (64 KB) into a buffer it drops, so
passes over every key (a training pass, a full export) do not accumulate the index in RAM.
Run files are opened once per snapshot and kept open, so a rebuild by another process (which
deletes superseded runs) never pulls them away.

The index is derived data. A missing, damaged or stale one (shards removed by a compaction) is
rebuilt from the shards with a note; a cache on a read-only disk gets a private index in a
temporary directory.

Many processes on many hosts update one index (every extract and every reader brings it up to
date with the shards it lists), and locks across hosts are not to be trusted on a network
filesystem, so the index is safe without its lock (which only spares the processes of one host
from doing the same work twice):

* an update writes new files only, under names of its own (``run-<random>``, temporaries
  ``.tmp-<pid>-<random>-*``), then publishes its manifest by renaming it over ``manifest.json``,
  which every filesystem does atomically: concurrent updaters each publish a complete index of
  the shards they listed, the last rename wins, and a reader whose listing it does not match
  extends it again;
* no update deletes a file another may still need: superseded runs and stray temporaries are
  removed only once :data:`GRACE_S` old and not named by the manifest published at that
  moment; runs that an update wrote and merged away before publishing (never named by any
  manifest) go at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from headstart.atomic import TEMPORARY_PREFIX, atomic_path, fsync_path, write_text_atomic
from headstart.cache.keys import KEY_DTYPE
from headstart.cache.shards import SHARD_READ_ERRORS, read_shard_info, read_shard_keys
from headstart.errors import HeadstartError, first_line

__all__ = [
    "GRACE_S",
    "INDEX_DIRECTORY",
    "KEY_INDEX_FORMAT",
    "MAX_RUNS",
    "KeyIndex",
    "open_key_index",
    "split_locations",
]

log = logging.getLogger(__name__)

KEY_INDEX_FORMAT = "headstart-keyindex/1"
INDEX_DIRECTORY = "keyindex"
MAX_RUNS = 8
# How long a superseded run or a temporary is kept: longer than any update takes, so another
# updater's files are never pulled from under it, and long enough for readers on other hosts
# (where a deleted file that is still open reads as "stale", not as its old contents).
GRACE_S = 3600.0
_MANIFEST = "manifest.json"
_LOC_DTYPE = np.dtype("<i8")
_BUILD_ROWS = 1 << 20  # keys sorted in memory at once when a run is written (72 MB)
_MERGE_WINDOW = 1 << 16  # keys read from each run per merge step
_BLOCK_KEYS = 1024  # keys a lookup reads at once (64 KB); a fence a block stays in memory
_UPDATE_TRIES = 5
_STALE_TRIES = 200


class _StaleSnapshot(Exception):
    """The shards changed under an update (a compaction deleted one): list them again."""


@dataclass(frozen=True)
class _Run:
    """One run's two files, open for the life of the snapshot that reads them, and its fences
    (every :data:`_BLOCK_KEYS`-th key) in memory.

    Lookups read the blocks their keys fall in with ``pread`` into small buffers they drop:
    mapping the files instead made the kernel map page-cache folios of up to megabytes at each
    probe, and a thousand lookups in a 400,000-key run held 7 MB where 50,000 keys held 1.
    """

    name: str
    count: int
    keys_file: BinaryIO
    loc_file: BinaryIO
    fences: np.ndarray

    def lookup(self, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hit, location) of each of ``sorted_keys`` (location meaningful where hit)."""
        hit = np.zeros(len(sorted_keys), dtype=bool)
        locations = np.zeros(len(sorted_keys), _LOC_DTYPE)
        if self.count == 0 or not len(sorted_keys):
            return hit, locations
        # The block each key would be in: the last one whose first key is not above it.
        blocks = (np.searchsorted(self.fences, sorted_keys, side="right") - 1).clip(min=0)
        bounds = np.flatnonzero(np.diff(blocks)) + 1
        for first, last in zip(
            np.concatenate([[0], bounds]), np.concatenate([bounds, [len(blocks)]]), strict=True
        ):
            start = int(blocks[first]) * _BLOCK_KEYS
            stop = min(start + _BLOCK_KEYS, self.count)
            keys = self._read(self.keys_file, KEY_DTYPE, start, stop)
            wanted = sorted_keys[first:last]
            at = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
            found = keys[at] == wanted
            if found.any():
                block_locations = self._read(self.loc_file, _LOC_DTYPE, start, stop)
                hit[first:last] = found
                locations[first:last][found] = block_locations[at[found]]
        return hit, locations

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The keys and locations of positions ``start:stop``."""
        stop = min(stop, self.count)
        return (
            self._read(self.keys_file, KEY_DTYPE, start, stop),
            self._read(self.loc_file, _LOC_DTYPE, start, stop),
        )

    @staticmethod
    def _read(file: BinaryIO, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
        size = max(stop - start, 0) * dtype.itemsize
        data = os.pread(file.fileno(), size, start * dtype.itemsize)
        if len(data) != size:
            raise OSError(f"key index run {file.name} ends early")
        return np.frombuffer(data, dtype)

    def close(self) -> None:
        self.keys_file.close()
        self.loc_file.close()


class KeyIndex:
    """A snapshot of the index: which shards it covers, and lookups by key.

    Example:
        >>> index = open_key_index(Path("cache/6f1c.../shards"))  # doctest: +SKIP
        >>> found, shard, row = index.locate(keys)
        >>> index.shard_names[shard[0]]
    """

    def __init__(self, directory: Path, manifest: dict, runs: list[_Run]) -> None:
        self.directory = directory
        self.shard_names: list[str] = [entry["name"] for entry in manifest["shards"]]
        self.shard_rows: list[int] = [int(entry["rows"]) for entry in manifest["shards"]]
        self.unreadable: dict[str, str] = {
            entry["name"]: entry["reason"] for entry in manifest["unreadable"]
        }
        self._manifest = manifest
        self.count = int(manifest["count"])
        self.dim: int | None = manifest.get("dim")
        self._runs = runs
        self._closer = weakref.finalize(self, _close_runs, runs)

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        self._closer()

    def locations(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, location) of each key: location is ``shard number << 32 | row`` (int64),
        meaningful where found."""
        keys = np.asarray(keys, KEY_DTYPE)
        order = np.argsort(keys, kind="stable")
        # Sorted queries let each binary search start where the previous one ended, so a block
        # of keys reads each page of a run at most once.
        queries = keys[order]
        locations = np.full(len(keys), -1, _LOC_DTYPE)
        found = np.zeros(len(keys), dtype=bool)
        for run in self._runs:  # newest first: the first run that holds a key decides
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            hit, at = run.lookup(queries[todo])
            locations[todo[hit]] = at[hit]
            found[todo[hit]] = True
        out_found = np.empty_like(found)
        out_found[order] = found
        out_locations = np.empty_like(locations)
        out_locations[order] = locations
        return out_found, out_locations

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, shard number, row) of each key; shard and row are -1 where not found."""
        found, locations = self.locations(keys)
        shard, row = split_locations(locations)
        return found, np.where(found, shard, -1), np.where(found, row, -1)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.locate(keys)[0]

    def iter_sorted_keys(self, block_rows: int = _MERGE_WINDOW) -> Iterator[np.ndarray]:
        """Every key once, in sorted order, ``block_rows`` at a time."""
        for keys, _ in _merged(self._runs, block_rows):
            yield keys


def split_locations(locations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard number, row) of locations as :meth:`KeyIndex.locations` gives them, int32."""
    locations = np.asarray(locations, _LOC_DTYPE)
    return (locations >> 32).astype(np.int32), (locations & 0xFFFFFFFF).astype(np.int32)


def open_key_index(shards_directory: Path, index_directory: Path | None = None) -> KeyIndex:
    """The key index of a fingerprint's shards, brought up to date first when shards were
    added or removed since it was written (built from the shards when missing or damaged)."""
    if index_directory is None:
        index_directory = shards_directory.parent / INDEX_DIRECTORY
    for _ in range(_UPDATE_TRIES):
        listing = _list_shards(shards_directory)
        snapshot = _read_snapshot(index_directory, listing)
        if snapshot is not None:
            return snapshot
        try:
            _update(shards_directory, index_directory)
        except OSError as exc:  # a read-only disk, no permission, a file in the way
            log.warning(
                "cannot write the key index in %s (%s); using a private copy for this run",
                index_directory,
                first_line(exc),
            )
            return _private_index(shards_directory)
    # Writers kept publishing between our update and our read: serve the last state we wrote.
    snapshot = _read_snapshot(index_directory, None)
    if snapshot is None:
        return _private_index(shards_directory)
    return snapshot


def _private_index(shards_directory: Path) -> KeyIndex:
    """An index in a temporary directory, for a cache this process cannot write to."""
    directory = Path(tempfile.mkdtemp(prefix="headstart-keyindex-"))
    _update(shards_directory, directory, note=False)
    snapshot = _read_snapshot(directory, None)
    if snapshot is None:  # only this process knows the directory: it cannot have changed
        raise OSError(f"the key index just written to {directory} cannot be read back")
    weakref.finalize(snapshot, shutil.rmtree, directory, True)
    return snapshot


def _list_shards(directory: Path) -> dict[str, list[int]]:
    """Published shards (name -> [size, mtime_ns]) in creation order: a shard is immutable, so
    a changed signature means a damaged or replaced file."""
    if not directory.is_dir():
        return {}
    listing = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".h5") and not entry.name.startswith("."):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted by a compaction while listed
                listing[entry.name] = [st.st_size, st.st_mtime_ns]
    return dict(sorted(listing.items()))


def _signatures(entries: list[dict]) -> dict[str, list[int]]:
    return {entry["name"]: [entry["size"], entry["mtime_ns"]] for entry in entries}


def _read_snapshot(directory: Path, listing: dict[str, list[int]] | None) -> KeyIndex | None:
    """The index as published, or None when it is missing, damaged or does not cover exactly
    ``listing`` (None: take whatever is published)."""
    manifest = _read_manifest(directory)
    if manifest is None:
        return None
    if listing is not None:
        covered = _signatures(manifest["shards"]) | _signatures(manifest["unreadable"])
        if covered != listing:
            return None
    runs: list[_Run] = []
    try:
        for entry in manifest["runs"]:
            runs.append(_open_run(directory, entry["name"], int(entry["count"])))
    except (OSError, ValueError):
        _close_runs(runs)
        return None  # superseded by an update since the manifest was read, or damaged
    return KeyIndex(directory, manifest, runs)


def _read_manifest(directory: Path) -> dict | None:
    try:
        manifest = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != KEY_INDEX_FORMAT:
        return None
    return manifest


def _open_run(directory: Path, name: str, count: int) -> _Run:
    keys_file = open(directory / f"{name}.keys", "rb")  # noqa: SIM115 - kept open by the snapshot
    try:
        loc_file = open(directory / f"{name}.loc", "rb")  # noqa: SIM115
    except OSError:
        keys_file.close()
        raise
    try:
        sizes = (os.fstat(keys_file.fileno()).st_size, os.fstat(loc_file.fileno()).st_size)
        if sizes != (count * KEY_DTYPE.itemsize, count * _LOC_DTYPE.itemsize):
            raise ValueError(f"key index run {name} is truncated")
        fences = np.array(
            [
                _Run._read(keys_file, KEY_DTYPE, start, start + 1)[0]
                for start in range(0, count, _BLOCK_KEYS)
            ],
            dtype=KEY_DTYPE,
        )
    except (OSError, ValueError):
        keys_file.close()
        loc_file.close()
        raise
    return _Run(name, count, keys_file, loc_file, fences)


def _close_runs(runs: list[_Run]) -> None:
    for run in runs:
        run.close()


def _update(shards_directory: Path, directory: Path, *, note: bool = True) -> None:
    """Bring the published index up to date with the shards, under the index's lock."""
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / ".lock"):
        # A compaction deletes the shards it merged one after another: list again until a
        # listing holds still long enough to be read (each try sees fewer old shards).
        for _ in range(_STALE_TRIES):
            try:
                _update_locked(shards_directory, directory, note)
                return
            except _StaleSnapshot:
                time.sleep(0.01)
        raise HeadstartError(
            f"the shards of {shards_directory} kept changing while their keys were indexed; "
            "try again once the compaction or extract writing them has finished"
        )


def _update_locked(shards_directory: Path, directory: Path, note: bool) -> None:
    listing = _list_shards(shards_directory)
    snapshot = _read_snapshot(directory, None)
    reusable = snapshot is not None and (
        _signatures(snapshot._manifest["shards"]).items() <= listing.items()
    )
    if reusable:
        manifest = _manifest_of(snapshot)
        runs = list(snapshot._runs)
    else:
        if note and snapshot is None and (directory / _MANIFEST).exists():
            # The runs a published manifest names are kept for GRACE_S whoever updates: a
            # manifest that does not read is damage, not a race.
            log.warning("key index %s is damaged; rebuilding it from the shards", directory)
        elif note and snapshot is not None:
            log.info("shards of %s were merged or removed; re-indexing", shards_directory)
        elif note and listing:
            log.info("indexing the keys of %d shards in %s", len(listing), shards_directory)
        manifest = _empty_manifest()
        runs = []
    created: list[_Run] = []
    try:
        _add_shards(shards_directory, directory, listing, manifest, runs, created)
    finally:
        _close_runs(created)
    published = {run.name for run in runs}
    for run in created:  # written by this update and merged away before it published
        if run.name not in published:
            for suffix in (".keys", ".loc"):
                (directory / f"{run.name}{suffix}").unlink(missing_ok=True)


def _add_shards(
    shards_directory: Path,
    directory: Path,
    listing: dict[str, list[int]],
    manifest: dict,
    runs: list[_Run],
    created: list[_Run],
) -> None:
    """Index the shards of ``listing`` that ``manifest`` does not cover, merge the runs when
    there are too many, and publish the new manifest."""
    manifest["unreadable"] = [
        entry
        for entry in manifest["unreadable"]
        if listing.get(entry["name"]) == [entry["size"], entry["mtime_ns"]]
    ]
    known = _signatures(manifest["shards"]) | _signatures(manifest["unreadable"])
    new = {name: signature for name, signature in listing.items() if name not in known}
    for batch in _batches(shards_directory, new, manifest):
        run, fresh = _write_run(directory, batch, runs)
        created.append(run)
        runs.insert(0, run)
        manifest["count"] += fresh
    if len(runs) > MAX_RUNS:
        runs[:] = [_merge_runs(directory, runs, manifest["count"])]
        created.append(runs[0])
    manifest["runs"] = [{"name": run.name, "count": run.count} for run in runs]
    write_text_atomic(directory / _MANIFEST, json.dumps(manifest, indent=1) + "\n")
    _remove_unreferenced(directory, {run.name for run in runs})


def _empty_manifest() -> dict:
    return {
        "format": KEY_INDEX_FORMAT,
        "shards": [],
        "unreadable": [],
        "runs": [],
        "count": 0,
        "dim": None,
    }


def _manifest_of(snapshot: KeyIndex) -> dict:
    """A copy of a snapshot's manifest to extend (its runs are listed again when published)."""
    return json.loads(json.dumps(snapshot._manifest)) | {"runs": []}


def _batches(
    shards_directory: Path, new: dict[str, list[int]], manifest: dict
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """New shards, oldest first, as batches of (shard number, keys) of up to ``_BUILD_ROWS``
    keys; each shard gets its number in the manifest (damaged ones go to its unreadable list)."""
    batch: list[tuple[int, np.ndarray]] = []
    rows = 0
    for name, (size, mtime_ns) in new.items():
        path = shards_directory / name
        try:
            keys = read_shard_keys(path)
            if manifest["dim"] is None:
                manifest["dim"] = read_shard_info(path).dim
        except SHARD_READ_ERRORS as exc:
            if not path.exists():
                raise _StaleSnapshot from None  # deleted by a compaction since it was listed
            manifest["unreadable"].append(
                {"name": name, "reason": first_line(exc), "size": size, "mtime_ns": mtime_ns}
            )
            continue
        number = len(manifest["shards"])
        manifest["shards"].append(
            {"name": name, "rows": len(keys), "size": size, "mtime_ns": mtime_ns}
        )
        batch.append((number, keys))
        rows += len(keys)
        if rows >= _BUILD_ROWS:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


def _write_run(
    directory: Path, batch: list[tuple[int, np.ndarray]], older: list[_Run]
) -> tuple[_Run, int]:
    """One run of a batch of shards; returns it and how many of its keys no older run holds."""
    # Newest shard first, so np.unique's first occurrence is the newest copy of a key.
    batch = sorted(batch, key=lambda item: item[0], reverse=True)
    keys = np.concatenate([keys for _, keys in batch])
    locations = np.concatenate(
        [(np.int64(number) << 32) | np.arange(len(keys), dtype=np.int64) for number, keys in batch]
    )
    keys, first = np.unique(keys, return_index=True)
    locations = locations[first]
    in_older = _contains(older, keys)
    name = f"run-{secrets.token_hex(8)}"
    _write_array(directory / f"{name}.keys", keys)
    _write_array(directory / f"{name}.loc", locations)
    return _open_run(directory, name, len(keys)), int((~in_older).sum())


def _contains(runs: list[_Run], keys: np.ndarray) -> np.ndarray:
    found = np.zeros(len(keys), dtype=bool)
    for run in runs:
        found |= run.lookup(keys)[0]
    return found


def _write_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        f.write(np.ascontiguousarray(array).tobytes())


def _merge_runs(directory: Path, runs: list[_Run], count: int) -> _Run:
    """The runs as one, written a window at a time (the newest copy of a key kept)."""
    name = f"run-{secrets.token_hex(8)}"
    written = 0
    with (
        atomic_path(directory / f"{name}.keys") as keys_path,
        atomic_path(directory / f"{name}.loc") as loc_path,
        open(keys_path, "wb") as keys_out,
        open(loc_path, "wb") as loc_out,
    ):
        for keys, locations in _merged(runs, _MERGE_WINDOW):
            keys_out.write(keys.tobytes())
            loc_out.write(locations.tobytes())
            written += len(keys)
        keys_out.flush()
        loc_out.flush()
    if written != count:
        log.warning("key index merge found %d keys where its manifest said %d", written, count)
    return _open_run(directory, name, written)


def _merged(runs: list[_Run], window: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sorted, unique (keys, locations) of several runs (newest first), a window at a time."""
    cursors = [0] * len(runs)
    while True:
        parts, bound = [], None
        for priority, (run, start) in enumerate(zip(runs, cursors, strict=True)):
            if start >= run.count:
                continue
            stop = min(start + window, run.count)
            keys, locations = run.read(start, stop)
            parts.append((priority, keys, locations))
            if stop < run.count and (bound is None or keys[-1] < bound):
                bound = keys[-1]  # past this key some run may still hold smaller ones
        if not parts:
            return
        taken_keys, taken_locations, taken_priorities = [], [], []
        for priority, keys, locations in parts:
            take = len(keys) if bound is None else int(np.searchsorted(keys, bound, "right"))
            cursors[priority] += take
            taken_keys.append(keys[:take])
            taken_locations.append(locations[:take])
            taken_priorities.append(np.full(take, priority, np.int32))
        keys = np.concatenate(taken_keys)
        locations = np.concatenate(taken_locations)
        order = np.lexsort((np.concatenate(taken_priorities), keys))
        keys, locations = keys[order], locations[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        yield keys[first], locations[first]


def _remove_unreferenced(directory: Path, keep: set[str]) -> None:
    """Delete superseded runs and temporaries left by a killed update, once :data:`GRACE_S`
    old: another updater (on this host or another) may be about to publish a manifest that
    names them, or be writing them. Runs the manifest published now names always stay."""
    published = _read_manifest(directory)
    if published is not None:
        keep = keep | {entry["name"] for entry in published["runs"]}
    old = time.time() - GRACE_S
    for path in directory.iterdir():
        stem = path.name.rsplit(".", 1)[0]
        superseded = path.name.startswith("run-") and stem not in keep
        if superseded or path.name.startswith(TEMPORARY_PREFIX):
            try:
                if path.stat().st_mtime < old:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue  # another updater removed it first
    fsync_path(directory)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """The index's lock when the filesystem gives one; updates are safe without it (see the
    module's note), it only keeps one host's processes from doing the same update twice."""
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(open(lock_path, "a"))
            fcntl.flock(handle, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        except OSError as exc:  # no lock service (NFS without lockd), or no lock file
            log.debug("no lock on %s (%s); updating without it", lock_path, exc)
        yield
