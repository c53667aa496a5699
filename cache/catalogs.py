"""Every writer's catalog read as one: what readers (and writers, when they plan) see.

Each writer of a cache keeps its own catalog (see :mod:`headstart.cache.writers`), so the same
path may be recorded by several of them: a SLURM part killed and rerun on another host, two
parts that both hashed a new file, a cache made before writers had catalogs of their own. The
newest record wins (by the time it was recorded), across the stat index and the ledger alike:
a file that failed on one host and read fine later on another is not a failure. A tar shard's
samples are read from the catalog holding its newest shard record (or, for a shard no one read
to its end, the newest samples), so two readings of one shard never mix.

:class:`CatalogSet` is a :class:`~headstart.cache.catalog.FileCatalog`: its lookups and listings
merge every catalog, its writes (``record``, ``forget_shard``) go to this process's own, which
is created, and its writer slot claimed, on the first write only: a reader never adds a file.
Reading another writer's catalog takes SQLite's shared lock of the rollback journal, so a
reader sees the transactions that writer committed, batch by batch: a consistent subset.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby
from pathlib import Path

from headstart.cache.catalog import (
    _IN_CHUNK,
    _MEMBER_MARK,
    _SCHEMA,
    FailureRecord,
    FileCatalog,
    FileRecord,
    SampleRecord,
    ShardRecord,
    _decoded,
    _sample,
    select_samples,
)
from headstart.cache.merged_rows import merged_rows, newest_rows
from headstart.cache.writers import WRITERS_DIRECTORY, WriterSlot
from headstart.pathnames import from_stored, to_stored

__all__ = ["LEGACY_CATALOG", "CatalogSet", "catalog_paths", "count_records"]

log = logging.getLogger(__name__)

LEGACY_CATALOG = "catalog.sqlite"  # the one catalog of caches made before writers had their own
_TABLES = frozenset({"files", "failures", "samples", "shards"})
_RESCAN_S = 5.0  # how often a long-lived view looks for writers that started since
_FAILURE_BLOCK = 1000

_FILES_IN = "SELECT path, size, mtime_ns, key, label, seen_unix FROM files WHERE path IN ({})"
_FAILURES_IN = (
    "SELECT path, size, mtime_ns, reason, label, seen_unix FROM failures WHERE path IN ({})"
)


def catalog_paths(root: Path) -> list[Path]:
    """The catalogs of the cache at ``root``: the one from before writers, then each writer's."""
    found = [root / LEGACY_CATALOG] if (root / LEGACY_CATALOG).is_file() else []
    writers = root / WRITERS_DIRECTORY
    if writers.is_dir():
        found += sorted(p / "catalog.sqlite" for p in writers.iterdir() if p.is_dir())
    return [path for path in found if path.is_file()]


def count_records(path: Path) -> dict[str, int]:
    """Rows of each table of one catalog (as that writer recorded them, before merging)."""
    db = sqlite3.connect(path, timeout=120)
    try:
        db.execute("PRAGMA query_only=ON")
        tables = _tables(db)
        return {
            name: int(db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])
            for name in ("files", "samples", "shards", "failures")
            if name in tables
        }
    finally:
        db.close()


class CatalogSet(FileCatalog):
    """The merged catalogs of the cache at ``root``; ``claim`` gives this process's writer slot
    on the first write, ``release`` frees it when the view closes.

    Example:
        >>> with EmbeddingCache(".headstart").catalog() as catalog:  # doctest: +SKIP
        ...     catalog.lookup(["/data/cat.jpg"])     # whichever writer recorded it last
        ...     catalog.record([FileRecord(...)])     # into this process's own catalog
    """

    def __init__(
        self,
        root: Path,
        claim: Callable[[], WriterSlot],
        release: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self._claim = claim
        self._release = release
        self._own: FileCatalog | None = None
        self._sources: dict[Path, sqlite3.Connection] = {}
        self._scanned = float("-inf")

    @property
    def path(self) -> Path | None:  # type: ignore[override]
        """This process's own catalog, once it has written."""
        return self._own.path if self._own is not None else None

    @property
    def _db(self) -> sqlite3.Connection:  # type: ignore[override]
        # FileCatalog's writes go through here: to this process's own catalog.
        if self._own is None:
            self._open_own()
        return self._own._db

    def close(self) -> None:
        for path, db in self._sources.items():
            if self._own is None or path != self._own.path:
                db.close()
        self._sources = {}
        if self._own is not None:
            self._own.close()
            self._own = None
            if self._release is not None:
                self._release()

    def _open_own(self) -> None:
        slot = self._claim()
        legacy = self.root / LEGACY_CATALOG
        reading = self._sources.pop(legacy, None)
        if reading is not None:
            reading.close()  # WAL is left only when no connection is open, this one included
        _settle_legacy(legacy)
        if reading is not None and (reopened := _open_source(legacy)) is not None:
            self._sources = {legacy: reopened, **self._sources}  # its place: first
        self._own = FileCatalog(slot.catalog_path, journal="delete")
        previous = self._sources.pop(slot.catalog_path, None)
        if previous is not None:
            previous.close()
        self._sources[slot.catalog_path] = self._own._db

    def _current(self) -> list[sqlite3.Connection]:
        """Every catalog's connection, looking for new writers at most every few seconds."""
        now = time.monotonic()
        if now - self._scanned >= _RESCAN_S:
            self._scanned = now
            for path in catalog_paths(self.root):
                if path not in self._sources:
                    db = _open_source(path)
                    if db is not None:
                        self._sources[path] = db
        return list(self._sources.values())

    # -- point lookups -------------------------------------------------------------------

    def lookup(self, paths: Sequence[str]) -> dict[str, FileRecord]:
        sources = self._current()
        if len(sources) == 1:  # one writer: its rows as they are (this runs once per image)
            return _lookup_one(sources[0], paths)
        files = newest_rows(sources, _FILES_IN, paths)
        if len(sources) > 1 and files:
            failed = newest_rows(sources, _FAILURES_IN, list(files))
            files = {p: v for p, v in files.items() if p not in failed or failed[p][0] < v[0]}
        return {path: FileRecord._make(row[:5]) for path, (_, _, row) in files.items()}

    def lookup_failures(self, paths: Sequence[str]) -> dict[str, FailureRecord]:
        sources = self._current()
        failed = newest_rows(sources, _FAILURES_IN, paths)
        if len(sources) > 1 and failed:
            files = newest_rows(sources, _FILES_IN, list(failed))
            failed = {p: v for p, v in failed.items() if p not in files or files[p][0] <= v[0]}
        return {path: FailureRecord._make(row[:5]) for path, (_, _, row) in failed.items()}

    def lookup_urls(self, urls: Sequence[str]) -> dict[str, str]:
        # URLs are taken not to change (as img2dataset takes them): the newest record wins.
        best: dict[str, tuple[float, str]] = {}
        for db in self._current():
            if "urls" not in _tables(db):  # a catalog from before tables of URLs
                continue
            for start in range(0, len(urls), _IN_CHUNK):
                part = [to_stored(url) for url in urls[start : start + _IN_CHUNK]]
                marks = ",".join("?" * len(part))
                query = f"SELECT url, key, seen_unix FROM urls WHERE url IN ({marks})"
                for url, key, seen in db.execute(query, part):
                    held = best.get(from_stored(url))
                    if held is None or seen >= held[0]:
                        best[from_stored(url)] = (seen, key)
        return {url: key for url, (_, key) in best.items()}

    def lookup_samples(self, shard: str, samples: Sequence[str]) -> dict[str, SampleRecord]:
        found = self._newest_shard(to_stored(shard))
        if found is not None:
            return select_samples(found[1], shard, samples)
        # No reading finished: rows any writer recorded (a table's parts record theirs).
        records: dict[str, SampleRecord] = {}
        for db in self._current():
            records.update(select_samples(db, shard, samples))
        return records

    def lookup_shard(self, path: str) -> ShardRecord | None:
        found = self._newest_shard(to_stored(path))
        if found is None:
            return None
        row = found[2]
        return ShardRecord(from_stored(row[0]), *row[1:7])

    def shard_keys(self, path: str) -> list[str]:
        db = self._shard_source(to_stored(path))
        if db is None:
            return []
        return [
            key
            for (key,) in db.execute("SELECT key FROM samples WHERE shard = ?", (to_stored(path),))
        ]

    def iter_shard_samples(self, path: str, chunk: int = 10_000) -> Iterator[list[SampleRecord]]:
        stored = to_stored(path)
        db = self._shard_source(stored)
        if db is None:
            return
        last: str | bytes = ""
        while rows := db.execute(
            "SELECT shard, sample, member, key, label, caption FROM samples "
            "WHERE shard = ? AND sample > ? ORDER BY sample LIMIT ?",
            (stored, last, chunk),
        ).fetchall():
            yield [_sample(row) for row in rows]
            last = rows[-1][1]

    def _newest_shard(self, stored: str | bytes) -> tuple[float, sqlite3.Connection, tuple] | None:
        """(seen, catalog, row) of the newest record of a shard."""
        best = None
        for db in self._current():
            row = db.execute(
                "SELECT path, size, mtime_ns, samples, failures, damage, fields, seen_unix "
                "FROM shards WHERE path = ?",
                (stored,),
            ).fetchone()
            if row is not None and (best is None or row[7] >= best[0]):
                best = (row[7], db, row)
        return best

    def _shard_source(self, stored: str | bytes) -> sqlite3.Connection | None:
        """The catalog a shard's samples are read from: the one with its newest record, or
        the newest samples when no writer read it to its end."""
        sources = self._current()
        found = self._newest_shard(stored)
        if found is not None:
            return found[1]
        best, chosen = None, None
        for db in sources:
            (seen,) = db.execute(
                "SELECT MAX(seen_unix) FROM samples WHERE shard = ?", (stored,)
            ).fetchone()
            if seen is not None and (best is None or seen >= best):
                best, chosen = seen, db
        return chosen

    # -- listings --------------------------------------------------------------------------

    def iter_files(self, chunk: int = 10_000) -> Iterator[list[FileRecord]]:
        sources = self._current()
        merged = merged_rows(sources, "files", "SELECT path, size, mtime_ns, key, label, seen_unix")
        block: list[tuple] = []
        for _, group in groupby(merged, key=lambda item: item[0]):
            block.append(max(group, key=lambda item: item[1])[2])
            if len(block) >= chunk:
                yield self._files_standing(block, len(sources))
                block = []
        if block:
            yield self._files_standing(block, len(sources))

    def _files_standing(self, rows: list[tuple], sources: int) -> list[FileRecord]:
        """Stat index rows no newer failure of the same path overrides."""
        decoded = [_decoded(row) for row in rows]
        if sources > 1:  # the failures that stand are those newer than the file's record
            failed = self.lookup_failures([row[0] for row in decoded])
            decoded = [row for row in decoded if row[0] not in failed]
        return [FileRecord._make(row[:5]) for row in decoded]

    def iter_samples(self, chunk: int = 10_000) -> Iterator[list[SampleRecord]]:
        sources = self._current()
        merged = merged_rows(
            sources,
            "samples",
            "SELECT shard, sample, member, key, label, caption, seen_unix",
            order=("shard", "sample"),
        )
        block: list[SampleRecord] = []
        for shard, group in groupby(merged, key=lambda item: item[0][0]):
            rows = list(group)  # one shard's samples, in every catalog that has some
            numbers = {number for _, number, _ in rows}
            found = self._newest_shard(shard[1]) if len(numbers) > 1 else None
            if found is not None:  # a shard read to its end: that reading's samples, unmixed
                keep = sources.index(found[1]) if found[1] in sources else max(numbers)
                rows = [item for item in rows if item[1] == keep]
            elif len(numbers) > 1:
                # No reading finished (a table's rows, which parts share among themselves, or
                # a shard cut short): each sample's newest record.
                rows = [
                    max(same, key=lambda item: item[2][6])
                    for _, same in groupby(rows, key=lambda item: item[0])
                ]
            block.extend(_sample(row[:6]) for _, _, row in rows)
            if len(block) >= chunk:
                yield block
                block = []
        if block:
            yield block

    def iter_failures(self) -> Iterator[FailureRecord]:
        sources = self._current()
        merged = merged_rows(
            sources, "failures", "SELECT path, size, mtime_ns, reason, label, seen_unix"
        )
        block: list[tuple[float, int, tuple]] = []
        for _, group in groupby(merged, key=lambda item: item[0]):
            _, number, row = max(group, key=lambda item: item[2][5])
            block.append((row[5], number, _decoded(row)))
            if len(block) >= _FAILURE_BLOCK:
                yield from self._failures_standing(block, sources)
                block = []
        yield from self._failures_standing(block, sources)

    def _failures_standing(
        self, block: list[tuple[float, int, tuple]], sources: list[sqlite3.Connection]
    ) -> Iterator[FailureRecord]:
        """Failures no newer record overrides: the file read fine since, or the tar shard the
        member belongs to was read again by another writer (which recorded its own)."""
        if len(sources) > 1 and block:
            files = newest_rows(sources, _FILES_IN, [row[0] for _, _, row in block])
            block = [
                item for item in block if item[2][0] not in files or files[item[2][0]][0] <= item[0]
            ]
            block = [item for item in block if not self._reread(item[0], sources[item[1]], item[2])]
        for _, _, row in block:
            yield FailureRecord._make(row[:5])

    def _reread(self, seen: float, db: sqlite3.Connection, row: tuple) -> bool:
        name = row[0]
        shards = [name] + [name[:at] for at, char in enumerate(name) if char == _MEMBER_MARK]
        for shard in shards:
            found = self._newest_shard(to_stored(shard))
            if found is not None and found[1] is not db and found[0] > seen:
                return True
        return False

    # -- counts ------------------------------------------------------------------------------

    def count_files(self) -> int:
        sources = self._current()
        if len(sources) == 1:
            return _count(sources[0], "files")
        return sum(len(block) for block in self.iter_files())

    def count_samples(self) -> int:
        sources = self._current()
        if len(sources) == 1:
            return _count(sources[0], "samples")
        return sum(len(block) for block in self.iter_samples())

    def count_failures(self) -> int:
        sources = self._current()
        if len(sources) == 1:
            return _count(sources[0], "failures")
        return sum(1 for _ in self.iter_failures())


def _open_source(path: Path) -> sqlite3.Connection | None:
    """Another catalog, for reading; None when it cannot be read yet (a writer creating it) or
    at all (damaged: ``cache verify`` says so). A catalog from before tar shards lacks their
    tables: empty ones stand in, so every open catalog answers every query."""
    try:
        # A plain (read-write) connection: after its writer was killed mid-transaction, the
        # first reader rolls the journal back, as SQLite recovers any database.
        db = sqlite3.connect(path, timeout=120)
        missing = _TABLES - _tables(db)
        if missing and (path.name != LEGACY_CATALOG or "files" in missing):
            db.close()  # a writer creating it right now: next time
            return None
        for statement in _SCHEMA.split(";"):
            if any(f"TABLE IF NOT EXISTS {name} " in statement for name in missing):
                db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE"))
        db.execute("PRAGMA query_only=ON")
    except sqlite3.DatabaseError as exc:
        log.warning("catalog %s cannot be read (%s); its records are left out", path, exc)
        return None
    return db


def _settle_legacy(path: Path) -> None:
    """Turn the single catalog of an older cache from WAL (one host) to the rollback journal
    that readers on other hosts can share; it is read, never written, from now on."""
    if not path.is_file():
        return
    try:
        db = sqlite3.connect(path, timeout=1)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                db.execute("PRAGMA journal_mode=DELETE")  # checkpoints, then drops the WAL
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:  # an older headstart still writing it: later
        log.info("catalog %s stays in WAL mode for now: %s", path, exc)


def _tables(db: sqlite3.Connection) -> frozenset[str]:
    """The catalog tables a connection's database has (an older catalog may lack some)."""
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return frozenset(name for (name,) in rows)


def _lookup_one(db: sqlite3.Connection, paths: Sequence[str]) -> dict[str, FileRecord]:
    found: dict[str, FileRecord] = {}
    for start in range(0, len(paths), _IN_CHUNK):
        part = [to_stored(value) for value in paths[start : start + _IN_CHUNK]]
        rows = db.execute(_FILES_IN.format(",".join("?" * len(part))), part).fetchall()
        found.update(
            (r.path, r) for r in map(FileRecord._make, (_decoded(row)[:5] for row in rows))
        )
    return found


def _count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
