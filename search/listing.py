"""The images an index build or an index add takes from its sources, listed a chunk at a time.

A listing writes what the index needs of each image as it passes: its (path, label, key,
caption) row for the item table, and its content key and place in the store to a
:class:`~headstart.classify.blocks.PlacedKeys` from which the build reads its vectors. Nothing
of it stays in memory, so listing a hundred million images costs what listing a thousand does.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from headstart.cache.store import EmbeddingCache, FingerprintStore
from headstart.classify.blocks import KeyFile, PlacedKeys
from headstart.classify.data import usable_chunks
from headstart.extract.samples import SampleFields
from headstart.search.items import (
    ItemTable,
    blob_or_none,
    blob_to_text,
    text_or_none,
    text_to_blob,
)

__all__ = ["ItemListing", "NewItems", "item_paths"]

_BLOCK = 65_536  # rows read back at a time


class ItemListing:
    """The sources' usable images in source order: :meth:`rows` gives their item rows and,
    as they pass, appends their keys and places to :attr:`keys`."""

    def __init__(
        self,
        sources: Sequence[str],
        cache: EmbeddingCache,
        store: FingerprintStore,
        fields: SampleFields | None = None,
    ) -> None:
        self._sources, self._cache, self._store, self._fields = sources, cache, store, fields
        self.keys = PlacedKeys(store, cache.root)
        self.listed = 0  # images listed, usable or not

    def rows(self) -> Iterator[tuple[str, str | None, str, str | None]]:
        for chunk in usable_chunks(self._sources, self._cache, self._store, fields=self._fields):
            self.keys.append(chunk.keys, chunk.locations)
            self.listed += chunk.listed
            texts = (key.decode() for key in chunk.keys)
            yield from zip(chunk.paths, chunk.labels, texts, chunk.captions, strict=True)


class NewItems:
    """The sources' usable images that an index does not hold yet, one row per content key
    (an image listed twice, or under two names, joins once), kept in a scratch SQLite table
    under ``directory`` until the index has taken them.

    Example:
        >>> with NewItems(index_dir) as new:  # doctest: +SKIP
        ...     new.collect(sources, cache, store, loaded.items)
        ...     add_to_index(index_dir, Vectors(store, new.keys), new.rows())
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._path = Path(directory) / f".new-items-{os.getpid()}.sqlite"
        self._path.unlink(missing_ok=True)
        self._db = sqlite3.connect(self._path)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(
            "CREATE TABLE new (row INTEGER PRIMARY KEY, path BLOB NOT NULL, label BLOB, "
            "key TEXT NOT NULL UNIQUE, caption BLOB)"
        )
        self.keys: KeyFile | None = None
        self.listed = 0  # images listed, usable or not
        self.usable = 0  # of those, embedded

    def __enter__(self) -> NewItems:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._db.close()
        self._path.unlink(missing_ok=True)

    def collect(
        self,
        sources: Sequence[str],
        cache: EmbeddingCache,
        store: FingerprintStore,
        indexed: ItemTable,
        fields: SampleFields | None = None,
    ) -> None:
        """List ``sources`` (read as ``fields`` say) and keep those of their images ``indexed``
        lacks; then write their keys, in listing order, to :attr:`keys`."""
        for chunk in usable_chunks(sources, cache, store, fields=fields):
            self.listed += chunk.listed
            self.usable += len(chunk.keys)
            texts = [key.decode() for key in chunk.keys]
            known = indexed.known(texts)
            rows = zip(chunk.paths, chunk.labels, texts, chunk.captions, strict=True)
            self._db.executemany(
                "INSERT OR IGNORE INTO new (path, label, key, caption) VALUES (?, ?, ?, ?)",
                (
                    (text_to_blob(path), blob_or_none(label), key, blob_or_none(caption))
                    for path, label, key, caption in rows
                    if key not in known
                ),
            )
            self._db.commit()
        self.keys = KeyFile(cache.root)
        for block in self._blocks("SELECT key FROM new"):
            self.keys.append(np.asarray([key.encode() for (key,) in block], dtype="S64"))

    def rows(self) -> Iterator[tuple[str, str | None, str, str | None]]:
        """The new images' (path, label, key, caption), in the order of :attr:`keys`."""
        for block in self._blocks("SELECT path, label, key, caption FROM new"):
            for path, label, key, caption in block:
                yield blob_to_text(path), text_or_none(label), key, text_or_none(caption)

    def _blocks(self, select: str) -> Iterator[list[tuple]]:
        # Its own cursor, by row ranges: a rows() generator and a key pass never share one.
        (count,) = self._db.execute("SELECT count(*) FROM new").fetchone()
        for start in range(0, count, _BLOCK):
            yield self._db.execute(
                f"{select} WHERE row > ? AND row <= ? ORDER BY row", (start, start + _BLOCK)
            ).fetchall()


def item_paths(items_path: str | os.PathLike[str], start: int = 0) -> Iterator[str]:
    """The paths of an item table's rows from ``start`` on, in row order, a block at a time."""
    table = ItemTable(items_path)
    try:
        for block in table.blocks(start=start):
            yield from (item.path for item in block)
    finally:
        table.close()
