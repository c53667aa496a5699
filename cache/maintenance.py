"""Keeping a cache healthy: compacting many small shards, and verifying everything reads.

Compaction writes merged shards first (each published atomically) and deletes the old ones
after: a reader sees the old shards, or old and new (holding the same vectors), or the new ones,
never a partial file. Values are copied in their stored precision, so they stay bit-identical.
Verification only reads.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from headstart.atomic import fsync_path
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KEY_DTYPE, KeySet
from headstart.cache.shards import (
    SHARD_FORMAT,
    SHARD_READ_ERRORS,
    publish_shard,
    read_shard_info,
    read_shard_keys,
    read_shard_rows,
    shard_paths,
)
from headstart.cache.store import EmbeddingCache
from headstart.errors import HeadstartError, first_line

__all__ = ["CompactResult", "VerifyReport", "compact", "verify"]


@dataclass(frozen=True)
class CompactResult:
    fingerprint: str
    shards_before: int
    shards_after: int
    rows: int
    duplicates_dropped: int


def compact(
    cache: EmbeddingCache, fingerprint: Fingerprint, *, shard_rows: int = 65536
) -> CompactResult:
    """Merge a fingerprint's shards into shards of up to ``shard_rows`` rows, dropping
    duplicate keys (the newest copy stays, as readers would choose it)."""
    directory = cache.root / fingerprint.id / "shards"
    with _exclusive(cache.root / fingerprint.id / ".compact.lock"):
        old = shard_paths(directory)
        _refuse_unreadable(old)
        if len(old) <= 1:
            rows = len(read_shard_keys(old[0])) if old else 0
            return CompactResult(fingerprint.id, len(old), len(old), rows, 0)
        seen = KeySet()
        buffer: list[tuple[np.ndarray, np.ndarray]] = []
        buffered = rows = dropped = written = 0
        for path in reversed(old):  # newest first: its copy of a duplicated key is kept
            keys, vectors = read_shard_keys(path), read_shard_rows(path)
            _, first = np.unique(keys, return_index=True)
            keep = np.zeros(len(keys), dtype=bool)
            keep[first] = True
            keep &= ~seen.contains(keys)
            dropped += int((~keep).sum())
            seen.add(keys[keep])
            buffer.append((keys[keep], vectors[keep]))
            buffered += int(keep.sum())
            while buffered >= shard_rows:
                buffer, buffered = _publish(directory, fingerprint.id, buffer, shard_rows)
                written += 1
            rows += int(keep.sum())
        if buffered:
            _publish(directory, fingerprint.id, buffer, buffered)
            written += 1
        for path in old:
            path.unlink()
        fsync_path(directory)
    return CompactResult(fingerprint.id, len(old), written, rows, dropped)


def _refuse_unreadable(shards: list[Path]) -> None:
    """Stop before writing anything when a shard is damaged: merging would delete it."""
    for path in shards:
        try:
            read_shard_info(path)
            read_shard_keys(path)
        except SHARD_READ_ERRORS as exc:
            raise HeadstartError(
                f"shard {path} cannot be read ({first_line(exc)}); move it out of the cache before "
                "compacting (its images are embedded again by the next extract)"
            ) from None


def _publish(directory: Path, fingerprint: str, buffer, rows: int):
    keys = np.concatenate([k for k, _ in buffer])
    # One float32 block in the group makes the merged shard float32: float16 values widen
    # exactly, while float32 values would lose bits in float16.
    dtype = "float32" if any(v.dtype == np.float32 for _, v in buffer) else "float16"
    vectors = np.concatenate([v.astype(dtype, copy=False) for _, v in buffer])
    publish_shard(directory, fingerprint, keys[:rows], vectors[:rows], dtype=dtype)
    rest = [(keys[rows:], vectors[rows:])] if len(keys) > rows else []
    return rest, len(keys) - rows


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HeadstartError(f"another compaction of {lock_path.parent} is running") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class VerifyReport:
    fingerprints: int = 0
    shards: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verify(cache: EmbeddingCache) -> VerifyReport:
    """Open and read everything in the cache; report what is missing or corrupt."""
    report = VerifyReport()
    if not cache.root.is_dir():
        raise HeadstartError(f"{cache.root} is not a directory")
    if cache.catalog_path.exists():
        _verify_catalog(cache.catalog_path, report)
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
