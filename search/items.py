"""An index's items (row -> path, label, content key, caption), kept on disk and read by row.

``items.sqlite`` holds one table, ``items(row INTEGER PRIMARY KEY, path BLOB, label BLOB, key
TEXT, caption BLOB)``: a query for ten neighbours reads ten rows through the primary key's
B-tree, so a service over a hundred million items holds none of them in memory. Paths, labels
and captions are stored as bytes (UTF-8, with the odd bytes of names that are not UTF-8 kept by
``surrogateescape``), so they read back exactly as they were written. Tables written before
captions were kept have no ``caption`` column: they read as items without one.

The file is written whole under a temporary name, a block of rows per transaction, and renamed
into place; it is never changed where it lies, so readers open it immutable (no locks, no
journal) and several processes can share it through the page cache.

Indexes written before this table kept ``items.csv``; :func:`items_from_csv` turns one into the
table, streaming, beside it.
"""

from __future__ import annotations

import csv
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from headstart.atomic import atomic_path
from headstart.errors import HeadstartError

__all__ = [
    "Item",
    "ItemTable",
    "blob_or_none",
    "blob_to_text",
    "items_from_csv",
    "text_or_none",
    "text_to_blob",
    "write_items",
]

_BLOCK = 65_536  # rows a transaction when writing, and at most this many in memory
_QUERY_ROWS = 500  # rows a SELECT asks for by id (under SQLite's bound-variable limit)


@dataclass(frozen=True)
class Item:
    """One indexed image: where it was, its label (None if unlabelled), its content key, and
    the caption its shard or table gave it (None if none)."""

    path: str
    label: str | None
    key: str
    caption: str | None = None


def text_to_blob(text: str) -> bytes:
    """A path or label as stored: UTF-8, odd bytes kept by ``surrogateescape``."""
    return text.encode("utf-8", "surrogateescape")


def blob_to_text(data: bytes) -> str:
    """What :func:`text_to_blob` stored, exactly as it was."""
    return data.decode("utf-8", "surrogateescape")


def write_items(
    path: str | os.PathLike[str],
    items: Iterable[tuple[str, str | None, str, str | None]],
    *,
    after: str | os.PathLike[str] | None = None,
) -> int:
    """Write ``(path, label, key, caption)`` rows, numbered from 0, to a new table at ``path``;
    returns how many. Rows are consumed a block at a time, so ``items`` may be a generator. With
    ``after`` (another table), its rows come first, copied by SQLite without passing through
    Python, and ``items`` are numbered after them."""
    rows = 0
    with atomic_path(path) as temporary:
        connection = sqlite3.connect(temporary)
        try:
            # The file is published by a rename after it is complete: no journal is needed.
            connection.execute("PRAGMA journal_mode = OFF")
            connection.execute("PRAGMA synchronous = OFF")
            connection.execute(
                "CREATE TABLE items (row INTEGER PRIMARY KEY, path BLOB NOT NULL, "
                "label BLOB, key TEXT NOT NULL, caption BLOB)"
            )
            if after is not None:
                connection.execute("ATTACH DATABASE ? AS old", (str(after),))
                caption = "caption" if _has_captions(connection, "old") else "NULL"
                connection.execute(
                    f"INSERT INTO items SELECT row, path, label, key, {caption} FROM old.items"
                )
                connection.commit()
                connection.execute("DETACH DATABASE old")
                (rows,) = connection.execute("SELECT count(*) FROM items").fetchone()
            iterator = iter(items)
            while block := list(islice(iterator, _BLOCK)):
                connection.executemany(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                    (
                        (rows + i, text_to_blob(p), blob_or_none(label), k, blob_or_none(caption))
                        for i, (p, label, k, caption) in enumerate(block)
                    ),
                )
                connection.commit()
                rows += len(block)
            # Finding content keys (is this image indexed already?) reads the B-tree, not the table.
            connection.execute("CREATE INDEX items_by_key ON items (key)")
            connection.commit()
        finally:
            connection.close()
    return rows


def items_from_csv(csv_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> int:
    """Convert an older index's ``items.csv`` (row, path, label, key) into a table at ``out``."""

    def rows() -> Iterator[tuple[str, str | None, str, None]]:
        with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            for record in csv.DictReader(f):
                yield record["path"], record["label"] or None, record["key"], None

    return write_items(out, rows())


class ItemTable:
    """Reads items by row from an ``items.sqlite``; safe to share between threads.

    Example:
        >>> items = ItemTable("index/items.sqlite")  # doctest: +SKIP
        >>> items[3].path, [item.key for item in items.take([5, 1])]  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro&immutable=1"
        try:
            # One connection, used under a lock: queries are a few rows each, and a connection
            # per thread would multiply open files in a service with many threads.
            self._connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
            (self._count,) = self._connection.execute("SELECT count(*) FROM items").fetchone()
            caption = "caption" if _has_captions(self._connection, "main") else "NULL"
        except sqlite3.Error as exc:
            raise HeadstartError(f"{self.path}: cannot read the index's items ({exc})") from None
        self._columns = f"path, label, key, {caption}"
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, row: int) -> Item:
        return self.take([row])[0]

    def take(self, rows: Sequence[int]) -> list[Item]:
        """The items of ``rows``, in that order (repeats allowed); IndexError for a row the
        table does not hold."""
        wanted = [int(r) for r in rows]
        found: dict[int, Item] = {}
        unique = sorted(set(wanted))
        with self._lock:
            for start in range(0, len(unique), _QUERY_ROWS):
                chunk = unique[start : start + _QUERY_ROWS]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT row, {self._columns} FROM items WHERE row IN ({marks})"
                for row, *record in self._connection.execute(query, chunk):
                    found[row] = _item(*record)
        missing = [r for r in wanted if r not in found]
        if missing:
            raise IndexError(f"no item {missing[0]}; the index holds {self._count}")
        return [found[r] for r in wanted]

    def known(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` some item has."""
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(keys), _QUERY_ROWS):
                chunk = list(keys[start : start + _QUERY_ROWS])
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key FROM items WHERE key IN ({marks})"
                found.update(key for (key,) in self._connection.execute(query, chunk))
        return found

    def blocks(self, rows: int = _BLOCK, start: int = 0) -> Iterator[list[Item]]:
        """Every item from row ``start`` on, in row order, ``rows`` at a time."""
        for first in range(start, self._count, rows):
            with self._lock:
                block = self._connection.execute(
                    f"SELECT {self._columns} FROM items WHERE row >= ? AND row < ? ORDER BY row",
                    (first, first + rows),
                ).fetchall()
            yield [_item(*record) for record in block]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def blob_or_none(text: str | None) -> bytes | None:
    return None if text is None else text_to_blob(text)


def text_or_none(data: bytes | None) -> str | None:
    return None if data is None else blob_to_text(data)


def _item(path: bytes, label: bytes | None, key: str, caption: bytes | None) -> Item:
    return Item(blob_to_text(path), text_or_none(label), key, text_or_none(caption))


def _has_captions(connection: sqlite3.Connection, schema: str) -> bool:
    """Whether ``schema``'s item table has the caption column (tables from before it do not)."""
    columns = connection.execute(f"PRAGMA {schema}.table_info(items)").fetchall()
    return any(column[1] == "caption" for column in columns)
