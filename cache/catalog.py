"""The catalog: what each image file was last seen as, and which files failed.

One SQLite database per writer of a cache, shared by every fingerprint (see
:mod:`headstart.cache.writers`; :mod:`headstart.cache.catalogs` merges them for readers):

* the stat index maps a path to its (size, mtime_ns) and content key, so a rerun over unchanged
  files costs a ``stat`` each instead of reading and hashing them; it also keeps the label the
  source gave the file, which export and the heads read back;
* the failure ledger records every file that could not be read or decoded, with the reason;
  a file is retried when it changes on disk, or on request. A sample of a tar shard that fails
  is recorded under ``SHARD#MEMBER``, a damaged shard under its own path;
* the URL table maps each image URL downloaded to the content key of what it sent, so a
  rerun over a table of URLs downloads nothing it has embedded (URLs are taken not to change,
  as img2dataset takes them); a URL that failed is in the ledger under the URL;
* the sample table maps each image sample of a tar shard, ``(shard, sample key)``, to its
  content key, label and caption; the shard table says which shards were read to their end
  (or their damage) at which stat signature, so a rerun skips them without opening them.

Catalogs written before the sample and shard tables existed gain them when opened.

A writer's catalog is written by its writer alone and uses SQLite's rollback journal, whose
locks other hosts' readers can share; the one ``catalog.sqlite`` of caches made before writers
had their own (WAL, one host) is read as one more catalog. A path or label that is not
valid UTF-8 (a Latin-1 file name) is stored as a BLOB of its exact bytes; every other one as
TEXT, as before.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from headstart.pathnames import from_stored, to_stored

__all__ = [
    "FailureRecord",
    "FileCatalog",
    "FileRecord",
    "SampleRecord",
    "ShardRecord",
    "member_name",
    "select_samples",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    key TEXT NOT NULL,
    label TEXT,
    seen_unix REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_key ON files(key);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    label TEXT,
    seen_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    shard TEXT NOT NULL,
    sample TEXT NOT NULL,
    member TEXT NOT NULL,
    key TEXT NOT NULL,
    label TEXT,
    caption TEXT,
    seen_unix REAL NOT NULL,
    PRIMARY KEY (shard, sample)
);
CREATE INDEX IF NOT EXISTS samples_by_key ON samples(key);
CREATE TABLE IF NOT EXISTS shards (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    damage TEXT,
    fields TEXT NOT NULL,
    seen_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS urls (
    url TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    seen_unix REAL NOT NULL
);
"""
# A ledger name SHARD#MEMBER sorts between SHARD# and SHARD$ ('$' follows '#'): the range
# that holds a shard's failures, found through the primary key without a LIKE pattern.
_MEMBER_MARK, _AFTER_MARK = "#", "$"
# Samples recorded under a table (headstart.extract.tables) rather than a tar shard.
_TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")
# SQLite's default limit on bound parameters in one statement is 32766 (999 before 3.32).
_IN_CHUNK = 900


class FileRecord(NamedTuple):
    """A file that was read: where, its stat signature, its content key and its label."""

    path: str
    size: int
    mtime_ns: int
    key: str
    label: str | None = None


class FailureRecord(NamedTuple):
    """A file that could not be used, and why. ``size``/``mtime_ns`` are -1 when stat failed."""

    path: str
    size: int
    mtime_ns: int
    reason: str
    label: str | None = None

    def matches(self, size: int, mtime_ns: int) -> bool:
        """True when the file on disk is still the one that failed."""
        return (self.size, self.mtime_ns) == (size, mtime_ns)


class SampleRecord(NamedTuple):
    """An image sample of a tar shard: the shard's path, the sample's key in it (webdataset's
    ``__key__``), the image member's name, its content key, and its label and caption. A row
    of a table is one too: the table, the row's id, the image's path or URL, key, label and
    caption."""

    shard: str
    sample: str
    member: str
    key: str
    label: str | None = None
    caption: str | None = None

    @property
    def name(self) -> str:
        """How the ledger, exports and heads name it: ``SHARD#MEMBER``; a table's row by the
        path or URL of its image."""
        if self.shard.lower().endswith(_TABLE_SUFFIXES):
            return self.member
        return member_name(self.shard, self.member)


class ShardRecord(NamedTuple):
    """A tar shard read to its end, or to its ``damage`` (a reason), at a stat signature:
    ``samples`` image samples recorded, ``failures`` ledger entries (the damage included);
    ``fields`` says where labels and captions were taken from."""

    path: str
    size: int
    mtime_ns: int
    samples: int
    failures: int
    damage: str | None
    fields: str


def member_name(shard: str, member: str) -> str:
    """The name of a member of a tar shard in the ledger and exports: ``SHARD#MEMBER``."""
    return f"{shard}{_MEMBER_MARK}{member}"


class FileCatalog:
    """Stat index and failure ledger in one SQLite file. ``journal`` is SQLite's journal mode:
    ``wal`` (one host; the default, as before writers) or ``delete`` (a writer's own catalog,
    which readers on other hosts may read).

    Example:
        >>> with FileCatalog(Path(".headstart/catalog.sqlite")) as catalog:  # doctest: +SKIP
        ...     catalog.lookup(["/data/cat.jpg"])
    """

    def __init__(self, path: Path, *, journal: str = "wal") -> None:
        if journal not in ("wal", "delete"):
            raise ValueError(f"journal must be wal or delete, got {journal!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=120)
        self._set_up(journal)

    def _set_up(self, journal: str) -> None:
        # Switching a new database to WAL can fail with "database is locked" at once, without
        # waiting out the timeout, when other processes (torchrun ranks) create it at the same
        # moment; it succeeds once the first of them is done.
        deadline = time.monotonic() + 120
        while True:
            try:
                self._db.execute(f"PRAGMA journal_mode={journal.upper()}")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self) -> FileCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def lookup(self, paths: Sequence[str]) -> dict[str, FileRecord]:
        """The stat index entries of ``paths`` that have one."""
        rows = self._select_in(
            "SELECT path, size, mtime_ns, key, label FROM files WHERE path IN ({})", paths
        )
        # NamedTuples straight from SQLite rows: this runs once per image on every read.
        records = map(FileRecord._make, map(_decoded, rows))
        return {record.path: record for record in records}

    def lookup_failures(self, paths: Sequence[str]) -> dict[str, FailureRecord]:
        rows = self._select_in(
            "SELECT path, size, mtime_ns, reason, label FROM failures WHERE path IN ({})", paths
        )
        records = map(FailureRecord._make, map(_decoded, rows))
        return {record.path: record for record in records}

    def record(
        self,
        files: Sequence[FileRecord] = (),
        failures: Sequence[FailureRecord] = (),
        samples: Sequence[SampleRecord] = (),
        shards: Sequence[ShardRecord] = (),
    ) -> None:
        """Store what was just read, in one transaction.

        A file that now reads fine leaves the ledger; a file that now fails leaves the stat
        index, so a stale key is never reported for it. The same goes for tar samples, named
        ``SHARD#MEMBER`` in the ledger. ``shards`` are recorded last: a shard is marked read
        only together with (or after) its last samples.
        """
        now = time.time()
        with self._db:
            self._record_samples(samples, now)
            self._db.executemany(
                "INSERT INTO files(path, size, mtime_ns, key, label, seen_unix) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size=excluded.size, "
                "mtime_ns=excluded.mtime_ns, key=excluded.key, label=excluded.label, "
                "seen_unix=excluded.seen_unix",
                [
                    (to_stored(f.path), f.size, f.mtime_ns, f.key, to_stored(f.label), now)
                    for f in files
                ],
            )
            self._db.executemany(
                "DELETE FROM failures WHERE path = ?", [(to_stored(f.path),) for f in files]
            )
            self._db.executemany(
                "INSERT INTO failures(path, size, mtime_ns, reason, label, seen_unix) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size=excluded.size, "
                "mtime_ns=excluded.mtime_ns, reason=excluded.reason, label=excluded.label, "
                "seen_unix=excluded.seen_unix",
                [
                    (to_stored(f.path), f.size, f.mtime_ns, f.reason, to_stored(f.label), now)
                    for f in failures
                ],
            )
            self._db.executemany(
                "DELETE FROM files WHERE path = ?", [(to_stored(f.path),) for f in failures]
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO shards(path, size, mtime_ns, samples, failures, damage, "
                "fields, seen_unix) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(to_stored(r.path), *r[1:], now) for r in shards],
            )

    def _record_samples(self, samples: Sequence[SampleRecord], now: float) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO samples(shard, sample, member, key, label, caption, "
            "seen_unix) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(*map(to_stored, r[:3]), r.key, *map(to_stored, r[4:]), now) for r in samples],
        )
        self._db.executemany(
            "DELETE FROM failures WHERE path = ?", [(to_stored(r.name),) for r in samples]
        )

    def lookup_urls(self, urls: Sequence[str]) -> dict[str, str]:
        """The content keys recorded for those of ``urls`` that were downloaded."""
        rows = self._select_in("SELECT url, key FROM urls WHERE url IN ({})", urls)
        return {from_stored(url): key for url, key in rows}

    def record_urls(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Remember ``(url, content key)`` pairs just downloaded; they leave the ledger."""
        if not pairs:
            return
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO urls(url, key, seen_unix) VALUES (?, ?, ?)",
                [(to_stored(url), key, now) for url, key in pairs],
            )
            self._db.executemany(
                "DELETE FROM failures WHERE path = ?", [(to_stored(url),) for url, _ in pairs]
            )

    def lookup_samples(self, shard: str, samples: Sequence[str]) -> dict[str, SampleRecord]:
        """The records of those of ``samples`` (sample names) recorded under ``shard``."""
        return select_samples(self._db, shard, samples)

    def lookup_shard(self, path: str) -> ShardRecord | None:
        """What is recorded of the tar shard at ``path`` (whatever its signature), or None."""
        row = self._db.execute(
            "SELECT path, size, mtime_ns, samples, failures, damage, fields FROM shards "
            "WHERE path = ?",
            (to_stored(path),),
        ).fetchone()
        return None if row is None else ShardRecord(from_stored(row[0]), *row[1:])

    def shard_keys(self, path: str) -> list[str]:
        """The content keys of the samples recorded for the tar shard at ``path``."""
        rows = self._db.execute("SELECT key FROM samples WHERE shard = ?", (to_stored(path),))
        return [key for (key,) in rows]

    def forget_shard(self, path: str) -> None:
        """Drop what is recorded of a shard (its samples, failures and record): it is about to
        be read again, and what it holds now replaces all of that."""
        stored = to_stored(path)
        low, high = (
            (path + _MEMBER_MARK, path + _AFTER_MARK)
            if isinstance(stored, str)
            else (stored + _MEMBER_MARK.encode(), stored + _AFTER_MARK.encode())
        )
        recorded = self._db.execute(
            "SELECT EXISTS(SELECT 1 FROM samples WHERE shard = ?) "
            "OR EXISTS(SELECT 1 FROM shards WHERE path = ?) "
            "OR EXISTS(SELECT 1 FROM failures WHERE path = ? OR (path >= ? AND path < ?))",
            (stored, stored, stored, low, high),
        ).fetchone()[0]
        if not recorded:  # a shard read for the first time: no write transaction
            return
        with self._db:
            self._db.execute("DELETE FROM samples WHERE shard = ?", (stored,))
            self._db.execute("DELETE FROM shards WHERE path = ?", (stored,))
            self._db.execute("DELETE FROM failures WHERE path = ?", (stored,))
            self._db.execute("DELETE FROM failures WHERE path >= ? AND path < ?", (low, high))

    def iter_shard_samples(self, path: str, chunk: int = 10_000) -> Iterator[list[SampleRecord]]:
        """The samples recorded for one shard, in sample-key order, ``chunk`` at a time."""
        stored, last = to_stored(path), ""
        while True:
            rows = self._db.execute(
                "SELECT shard, sample, member, key, label, caption FROM samples "
                "WHERE shard = ? AND sample > ? ORDER BY sample LIMIT ?",
                (stored, last, chunk),
            ).fetchall()
            if not rows:
                return
            yield [_sample(row) for row in rows]
            last = rows[-1][1]

    def iter_samples(self, chunk: int = 10_000) -> Iterator[list[SampleRecord]]:
        """Every recorded tar sample, by shard then sample key, ``chunk`` rows at a time."""
        last: tuple = ("", "")
        while True:
            rows = self._db.execute(
                "SELECT shard, sample, member, key, label, caption FROM samples "
                "WHERE (shard, sample) > (?, ?) ORDER BY shard, sample LIMIT ?",
                (*last, chunk),
            ).fetchall()
            if not rows:
                return
            yield [_sample(row) for row in rows]
            last = rows[-1][:2]

    def count_samples(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def count_files(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def count_failures(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM failures").fetchone()[0])

    def iter_failures(self) -> Iterator[FailureRecord]:
        cursor = self._db.execute(
            "SELECT path, size, mtime_ns, reason, label FROM failures ORDER BY path"
        )
        for row in cursor:
            yield FailureRecord._make(_decoded(row))

    def iter_files(self, chunk: int = 10_000) -> Iterator[list[FileRecord]]:
        """Every stat index entry, in path order, ``chunk`` rows at a time (paths stored as
        BLOBs sort after all others, as SQLite orders them)."""
        last: str | bytes = ""
        while True:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, key, label FROM files WHERE path > ? "
                "ORDER BY path LIMIT ?",
                (last, chunk),
            ).fetchall()
            if not rows:
                return
            yield [FileRecord._make(_decoded(row)) for row in rows]
            last = rows[-1][0]  # as stored: the next page starts after it in SQLite's order

    def _select_in(self, query: str, values: Sequence[str]) -> list[tuple]:
        rows: list[tuple] = []
        for start in range(0, len(values), _IN_CHUNK):
            part = [to_stored(value) for value in values[start : start + _IN_CHUNK]]
            rows.extend(self._db.execute(query.format(",".join("?" * len(part))), part).fetchall())
        return rows


def select_samples(
    db: sqlite3.Connection, shard: str, samples: Sequence[str]
) -> dict[str, SampleRecord]:
    """The records in ``db`` of those of ``samples`` (sample names) under ``shard``."""
    records: dict[str, SampleRecord] = {}
    for start in range(0, len(samples), _IN_CHUNK):
        part = [to_stored(sample) for sample in samples[start : start + _IN_CHUNK]]
        rows = db.execute(
            "SELECT shard, sample, member, key, label, caption FROM samples "
            f"WHERE shard = ? AND sample IN ({','.join('?' * len(part))})",
            (to_stored(shard), *part),
        )
        records.update((record.sample, record) for record in map(_sample, rows))
    return records


def _sample(row: tuple) -> SampleRecord:
    shard, sample, member, key, label, caption = row
    return SampleRecord(
        from_stored(shard),
        from_stored(sample),
        from_stored(member),
        key,
        from_stored(label),
        from_stored(caption),
    )


def _decoded(row: tuple) -> tuple:
    """A row with the paths and labels stored as BLOBs turned back into ``str``."""
    if isinstance(row[0], bytes) or isinstance(row[4], bytes):
        return (from_stored(row[0]), *row[1:4], from_stored(row[4]), *row[5:])
    return row
