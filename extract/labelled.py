"""Every image of some sources with its content key and label, from the catalog alone.

What the heads train on: image files with the key the stat index holds for them (while the
file is unchanged) and the label their folder or manifest gives; tar samples with the key,
label and caption recorded when their shard was read (while the shard is unchanged); table
rows with the label and caption the table gives, and the key of their file (while unchanged)
or of what their URL sent, named by that path or URL. No image
is read or hashed here, and rows come in blocks, so any number of images streams through.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from headstart.cache.catalog import FileCatalog
from headstart.extract.files import stat_file
from headstart.extract.remote import listed_stat
from headstart.extract.samples import SampleFields
from headstart.extract.shards import is_shard_source, list_shards
from headstart.extract.sources import ListingSkips, iter_images
from headstart.extract.tables import TableColumns, is_table_source, open_table

__all__ = ["LabelledRow", "ListedCount", "iter_labelled"]

_BLOCK = 8192


class LabelledRow(NamedTuple):
    """An image: its name (a path, or ``SHARD#MEMBER``), content key, label and caption."""

    name: str
    key: str
    label: str | None
    caption: str | None = None


@dataclass
class ListedCount:
    """How many images the sources listed, rows or not: files listed, and samples of the
    shards read (a file with no row is one that failed, changed, or was never read)."""

    images: int = 0


def iter_labelled(
    sources: Sequence[str],
    catalog: FileCatalog,
    *,
    block: int = _BLOCK,
    skipped: ListingSkips | None = None,
    listed: ListedCount | None = None,
    fields: SampleFields | None = None,
) -> Iterator[list[LabelledRow]]:
    """Blocks of :class:`LabelledRow` for the images of ``sources`` the catalog knows, source
    by source in the order given. A file changed since it was read, and a shard changed or not
    read to its end yet, have no rows: extract them first. ``skipped`` counts folders the
    listing could not look into (logged as warnings when not given); ``listed`` counts the
    images listed, with a row or not. ``fields`` names a table's columns.

    Example:
        >>> with EmbeddingCache(".headstart").catalog() as catalog:  # doctest: +SKIP
        ...     for rows in iter_labelled(["shards/{000..009}.tar", "photos/"], catalog):
        ...         keys = [row.key for row in rows]
    """
    listed = listed if listed is not None else ListedCount()
    columns = TableColumns.from_fields(fields or SampleFields())
    for source in sources:
        if is_table_source(source, columns):
            yield from _table_rows(source, columns, catalog, listed)
        elif is_shard_source(source):
            yield from _shard_rows(source, catalog, block, listed)
        else:
            yield from _file_rows(source, catalog, block, skipped, listed)


def _file_rows(
    source: str,
    catalog: FileCatalog,
    block: int,
    skipped: ListingSkips | None,
    listed: ListedCount,
) -> Iterator[list[LabelledRow]]:
    items = iter_images([source], skipped)
    while chunk := list(islice(items, block)):
        listed.images += len(chunk)
        known = catalog.lookup([item.path for item in chunk])
        rows = []
        for item in chunk:
            entry = known.get(item.path)
            if entry is None:
                continue
            # A remote listing's signature, else the file's (or the object's, asked for).
            st = listed_stat(item) or stat_file(item.path)[0]
            if st is None:
                continue
            if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):
                rows.append(LabelledRow(item.path, entry.key, item.label))
        if rows:
            yield rows


def _shard_rows(
    source: str, catalog: FileCatalog, block: int, listed: ListedCount
) -> Iterator[list[LabelledRow]]:
    for ref in list_shards([source]):
        record = catalog.lookup_shard(ref.path)
        if record is None or (record.size, record.mtime_ns) != (ref.size, ref.mtime_ns):
            continue
        for samples in catalog.iter_shard_samples(ref.path, block):
            listed.images += len(samples)
            yield [LabelledRow(s.name, s.key, s.label, s.caption) for s in samples]


def _table_rows(
    source: str, columns: TableColumns, catalog: FileCatalog, listed: ListedCount
) -> Iterator[list[LabelledRow]]:
    for block in open_table(source, columns).iter_blocks():
        listed.images += len(block)
        files = catalog.lookup([row.target for row in block if not row.is_url])
        urls = catalog.lookup_urls([row.target for row in block if row.is_url])
        rows = []
        for row in block:
            key = urls.get(row.target)
            entry = files.get(row.target)
            if entry is not None:
                st = stat_file(row.target)[0]
                if st is None:
                    continue
                if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):
                    key = entry.key
            if key is not None:
                rows.append(LabelledRow(row.target, key, row.label, row.caption))
        if rows:
            yield rows
