"""Keeping a cache healthy: compacting many small shards, and verifying everything reads.

Compaction writes merged shards first (each published atomically) and deletes the old ones
after: a reader sees the old shards, or old and new (holding the same vectors), or the new ones,
never a partial file. Values are copied in their stored precision, so they stay bit-identical.
Verification only reads.

Many writers may share a cache (see :mod:`headstart.cache.writers`). The compaction an extract
runs by itself merges only its own writer's shards: another writer, perhaps on another host,
may be compacting its own at the same moment, and locks across hosts are not to be trusted, so
no process ever deletes or rewrites a shard another live writer owns. ``headstart cache
compact`` merges every shard and is meant for when no extract is running.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from headstart.atomic import fsync_path
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KEY_DTYPE
from headstart.cache.shards import (
    SHARD_FORMAT,
    SHARD_READ_ERRORS,
    publish_shard,
    read_shard_info,
    read_shard_keys,
    read_shard_rows,
    shard_paths,
)
from headstart.cache.store import EmbeddingCache, FingerprintStore
from headstart.cache.writers import list_writers, writer_of_shard
from headstart.errors import HeadstartError

__all__ = [
    "AUTO_COMPACT_SHARDS",
    "COMPACT_SHARD_ROWS",
    "CompactResult",
    "CompactionRunning",
    "VerifyReport",
    "compact",
    "compact_small_shards",
    "verify",
]

log = logging.getLogger(__name__)

COMPACT_SHARD_ROWS = 65536
AUTO_COMPACT_SHARDS = 16


@dataclass(frozen=True)
class CompactResult:
    fingerprint: str
    shards_before: int
    shards_after: int
    rows: int
    duplicates_dropped: int


def compact(
    cache: EmbeddingCache,
    fingerprint: Fingerprint,
    *,
    shard_rows: int = COMPACT_SHARD_ROWS,
    smaller_than: int | None = None,
    wait: bool = False,
    writer: str | None = None,
) -> CompactResult:
    """Merge a fingerprint's shards into shards of up to ``shard_rows`` rows, dropping
    duplicate keys (the copy readers are served from stays). ``smaller_than`` merges only the
    shards with fewer rows (the large ones stay as they are); ``writer`` only the shards that
    writer published (see :func:`compact_small_shards`); ``wait`` waits for a compaction
    already running instead of refusing.

    Memory holds one output shard: which copy of a key to keep comes from the key index.
    """
    directory = cache.root / fingerprint.id / "shards"
    with _exclusive(cache.root / fingerprint.id / ".compact.lock", wait=wait):
        store = cache.open(fingerprint)
        sizes = store.shard_sizes()
        if smaller_than is None and writer is None:
            _refuse_unreadable(store)
        chosen = [
            path
            for path, rows in sizes.items()
            if (smaller_than is None or rows < smaller_than)
            and (writer is None or writer_of_shard(path.name) == writer)
        ]
        if len(chosen) <= 1:
            rows = sum(sizes[path] for path in chosen)
            return CompactResult(fingerprint.id, len(sizes), len(sizes), rows, 0)
        with _writing_as(cache) as own:  # merged shards are this process's
            buffer: list[tuple[np.ndarray, np.ndarray]] = []
            buffered = rows = dropped = written = 0
            for path in chosen:  # newest first, as the store lists them
                keys = read_shard_keys(path)
                keep = store.served_rows(path, keys)
                dropped += int((~keep).sum())
                buffer.append((keys[keep], read_shard_rows(path, np.flatnonzero(keep))))
                buffered += int(keep.sum())
                while buffered >= shard_rows:
                    buffer, buffered = _publish(directory, fingerprint.id, buffer, shard_rows, own)
                    written += 1
                rows += int(keep.sum())
            if buffered:
                _publish(directory, fingerprint.id, buffer, buffered, own)
                written += 1
            for path in chosen:
                path.unlink()
            fsync_path(directory)
    after = len(sizes) - len(chosen) + written
    return CompactResult(fingerprint.id, len(sizes), after, rows, dropped)


def compact_small_shards(cache: EmbeddingCache, fingerprint: Fingerprint) -> CompactResult | None:
    """Merge the small shards that this process's writer published (a few thousand rows each,
    so a crash loses little; its earlier runs' too, as reruns on a host reuse its writer ids)
    once there are :data:`AUTO_COMPACT_SHARDS` of them, so that a cache of ten million rows is
    a few hundred files, not thousands. Other writers' shards are theirs to merge: they may be
    running. None when there is nothing to do or another compaction is running."""
    store = cache.open(fingerprint)
    own = cache.writer().id
    small = [
        rows
        for path, rows in store.shard_sizes().items()
        if rows < COMPACT_SHARD_ROWS and writer_of_shard(path.name) == own
    ]
    if len(small) < AUTO_COMPACT_SHARDS:
        return None
    try:
        return compact(cache, fingerprint, smaller_than=COMPACT_SHARD_ROWS, writer=own)
    except CompactionRunning:
        return None


def _refuse_unreadable(store: FingerprintStore) -> None:
    """Stop before writing anything when a shard is damaged: merging would delete it."""
    for path, reason in store.unreadable.items():
        raise HeadstartError(
            f"shard {path} cannot be read ({reason}); move it out of the cache before "
            "compacting (its images are embedded again by the next extract)"
        )


def _publish(directory: Path, fingerprint: str, buffer, rows: int, writer: str):
    keys = np.concatenate([k for k, _ in buffer])
    # One float32 block in the group makes the merged shard float32: float16 values widen
    # exactly, while float32 values would lose bits in float16.
    dtype = "float32" if any(v.dtype == np.float32 for _, v in buffer) else "float16"
    vectors = np.concatenate([v.astype(dtype, copy=False) for _, v in buffer])
    publish_shard(directory, fingerprint, keys[:rows], vectors[:rows], dtype=dtype, writer=writer)
    rest = [(keys[rows:], vectors[rows:])] if len(keys) > rows else []
    return rest, len(keys) - rows


@contextmanager
def _writing_as(cache: EmbeddingCache) -> Iterator[str]:
    """This process's writer id; a slot claimed here (``cache compact``) is freed after."""
    claimed_here = not cache.holds_writer
    try:
        yield cache.writer().id
    finally:
        if claimed_here:
            cache.release_writer()


class CompactionRunning(HeadstartError):
    """Another process is compacting the same fingerprint."""


@contextmanager
def _exclusive(lock_path: Path, wait: bool = False) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        locked = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise CompactionRunning(
                f"another compaction of {lock_path.parent} is running"
            ) from None
        except OSError as exc:
            # No lock service (NFS without lockd): a writer's compaction keeps to its own
            # shards, so the lock only ever kept a manual compaction off them.
            log.info("no lock on %s (%s); compacting without it", lock_path, exc)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class VerifyReport:
    fingerprints: int = 0
    shards: int = 0
    rows: int = 0
    catalogs: int = 0
    writers: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verify(cache: EmbeddingCache) -> VerifyReport:
    """Open and read everything in the cache; report what is missing or corrupt."""
    report = VerifyReport()
    if not cache.root.is_dir():
        raise HeadstartError(f"{cache.root} is not a directory")
    for catalog in cache.catalog_paths():
        report.catalogs += 1
        _verify_catalog(catalog, report)
    _verify_writers(cache, report)
    for directory in sorted(p for p in cache.root.iterdir() if p.is_dir()):
        record = directory / "fingerprint.json"
        if not record.is_file():
            if (directory / "shards").exists():
                report.problems.append(f"{directory.name}: shards without a fingerprint.json")
            continue
        try:
            document = json.loads(record.read_text())
            recomputed = Fingerprint.from_dict(document, check_id=False).id
        except (ValueError, KeyError, TypeError) as exc:
            report.problems.append(f"{record}: unreadable ({exc})")
            continue
        if recomputed != directory.name or document.get("id") != directory.name:
            report.problems.append(
                f"{record}: its recipe hashes to {recomputed}, not {directory.name}"
            )
        report.fingerprints += 1
        _verify_shards(directory, report)
    return report


def _verify_catalog(path: Path, report: VerifyReport) -> None:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            answer = db.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"{path}: {exc}")
        return
    if answer != "ok":
        report.problems.append(f"{path}: integrity check says {answer}")


def _verify_writers(cache: EmbeddingCache, report: VerifyReport) -> None:
    """Each writer's record reads, and says whether it finished; a shard's writer is known."""
    for writer in list_writers(cache.root):
        report.writers += 1
        if writer.host == "?":
            report.problems.append(f"{writer.directory}: writer.json is missing or unreadable")
        elif writer.finished_unix is None:
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(writer.started_unix))
            report.notes.append(
                f"writer {writer.id} (pid {writer.pid} on {writer.host}, started {started}) has "
                "not finished: still running, or stopped early (what it recorded is kept)"
            )
        if not writer.catalog_path.is_file():
            report.notes.append(f"writer {writer.id} has no catalog (it recorded nothing)")


def _verify_shards(directory: Path, report: VerifyReport) -> None:
    shards_directory = directory / "shards"
    leftovers = sorted(shards_directory.glob(".tmp-*")) if shards_directory.is_dir() else []
    for leftover in leftovers:
        report.notes.append(f"{leftover}: temporary file of an interrupted write (safe to delete)")
    dims = set()
    for path in shard_paths(shards_directory):
        report.shards += 1
        try:
            info = read_shard_info(path)
            keys = read_shard_keys(path)
            vectors = read_shard_rows(path)
            with h5py.File(path, "r", locking=False) as f:
                layout = str(f.attrs.get("format"))
        except SHARD_READ_ERRORS as exc:
            report.problems.append(f"{path}: cannot be read ({exc})")
            continue
        if layout != SHARD_FORMAT or info.fingerprint != directory.name:
            report.problems.append(f"{path}: belongs to {info.fingerprint}, format {layout}")
        if not (info.count == len(keys) == len(vectors)) or vectors.shape[1:] != (info.dim,):
            report.problems.append(
                f"{path}: {info.count} rows announced, {len(keys)} keys, vectors {vectors.shape}"
            )
        if keys.dtype != KEY_DTYPE or not all(len(k) == 64 for k in keys.tolist()):
            report.problems.append(f"{path}: keys are not 64-character SHA-256 hex digests")
        if not np.isfinite(vectors).all():
            report.notes.append(f"{path}: holds non-finite values (NaN or infinity)")
        dims.add(info.dim)
        report.rows += len(keys)
    if len(dims) > 1:
        report.problems.append(f"{directory.name}: shards of different widths {sorted(dims)}")
