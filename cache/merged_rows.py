"""Rows of one table in several SQLite catalogs, read as one: the newest row of each path,
and every row in one stream in SQLite's order (for :mod:`headstart.cache.catalogs`).

Each catalog is paged through by its primary key, so memory holds a page per catalog whatever
their size; :func:`heapq.merge` interleaves the pages.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from headstart.cache.catalog import _IN_CHUNK, _decoded
from headstart.pathnames import to_stored

__all__ = ["merged_rows", "newest_rows"]


def newest_rows(
    sources: Iterable[sqlite3.Connection], query: str, paths: Sequence[str]
) -> dict[str, tuple[float, int, tuple]]:
    """path -> (seen, catalog number, decoded row) of the newest row of each path."""
    best: dict[str, tuple[float, int, tuple]] = {}
    for number, db in enumerate(sources):
        for start in range(0, len(paths), _IN_CHUNK):
            part = [to_stored(value) for value in paths[start : start + _IN_CHUNK]]
            for raw in db.execute(query.format(",".join("?" * len(part))), part):
                row = _decoded(raw)
                held = best.get(row[0])
                if held is None or row[5] >= held[0]:
                    best[row[0]] = (row[5], number, row)
    return best


def merged_rows(
    sources: Sequence[sqlite3.Connection],
    table: str,
    select: str,
    order: tuple[str, ...] = ("path",),
    page: int = 10_000,
) -> Iterator[tuple[tuple, int, tuple]]:
    """Every catalog's rows of ``table`` as one stream in SQLite's order of ``order`` (TEXT
    before BLOB), as (sort key, catalog number, raw row); rows of one key come together."""
    streams = [
        _tagged(number, _pages(db, table, select, order, page), len(order))
        for number, db in enumerate(sources)
    ]
    return heapq.merge(*streams, key=lambda item: item[0])


def _tagged(number: int, rows: Iterator[tuple], width: int) -> Iterator[tuple[tuple, int, tuple]]:
    for row in rows:
        yield _sort_key(row[:width]), number, row


def _pages(
    db: sqlite3.Connection, table: str, select: str, order: tuple[str, ...], page: int
) -> Iterator[tuple]:
    columns = ", ".join(order)
    marks = ", ".join("?" * len(order))
    last: tuple | None = None
    while True:
        where = f"WHERE ({columns}) > ({marks}) " if last is not None else ""
        rows = db.execute(
            f"{select} FROM {table} {where}ORDER BY {columns} LIMIT ?", (*(last or ()), page)
        ).fetchall()
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1][: len(order)]


def _sort_key(values: tuple) -> tuple:
    # SQLite sorts TEXT (by its UTF-8 bytes, which is code point order) before BLOB.
    return tuple((isinstance(value, bytes), value) for value in values)
