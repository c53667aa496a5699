"""Reading pending table rows: fetched (downloaded, or read from disk), hashed, decoded.

A DataLoader over :class:`TableDataset`, each worker taking its own runs of the pending rows
and fetching them in a pool of downloader threads (local files are read in the same pool),
decoding what arrives as it completes. Every row read becomes a :class:`SampleRecord` (table,
row, image, key, label, caption), a local file also a :class:`FileRecord` for the stat index;
a download the store already holds is recorded but not decoded. Every failure (a download's
reason, a file that cannot be read, bytes that are not an image) becomes a
:class:`FailureRecord` under the file's path or the URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from headstart.cache.catalog import FileRecord
from headstart.cache.keys import content_key
from headstart.cache.store import FingerprintStore
from headstart.extract.download import Downloader, DownloadError, DownloadLimits
from headstart.extract.files import UnreadableFile, read_file
from headstart.extract.reader import DecodedItem, decode_item, make_loader
from headstart.extract.shard_reader import StoreProbe
from headstart.extract.table_plan import RowList, failure_of, sample_of
from headstart.extract.tables import TableRow
from headstart.models.preprocess import Preprocess

__all__ = ["TableDataset", "make_table_loader"]

# Pending rows go to DataLoader workers in runs of this many, so each worker's downloads
# start at once rather than after the others'.
_WORKER_RUN = 16


class TableDataset(IterableDataset):
    """Fetches and decodes pending table rows into :class:`DecodedItem`, each DataLoader
    worker its own runs of rows with its own downloader (the per-host cap is shared out among
    the workers).

    Example:
        >>> items = list(TableDataset(rows, preprocess, DownloadLimits()))  # doctest: +SKIP
    """

    def __init__(
        self,
        rows: RowList,
        preprocess: Preprocess,
        limits: DownloadLimits,
        stored: StoreProbe | None = None,
        *,
        defer_jpegs: bool = False,
    ) -> None:
        self.rows = rows
        self.preprocess = preprocess
        self.limits = limits
        self.stored = stored
        self.defer_jpegs = defer_jpegs

    def __iter__(self) -> Iterator[DecodedItem]:
        worker = get_worker_info()
        index, count = (0, 1) if worker is None else (worker.id, worker.num_workers)
        mine = (
            row for number, row in enumerate(self.rows) if (number // _WORKER_RUN) % count == index
        )
        limits = self.limits
        if count > 1:
            limits = replace(
                limits,
                per_host=max(1, limits.per_host // count),
                threads=max(1, limits.threads // count),
            )
        with Downloader(limits) as downloader:

            def fetch(row: TableRow) -> tuple[bytes, os.stat_result | None]:
                if row.is_url:
                    return downloader.fetch(row.target), None
                return read_file(row.target)

            for row, result in downloader.map(mine, fetch):
                yield self._item(row, result)

    def _item(
        self, row: TableRow, result: tuple[bytes, os.stat_result | None] | Exception
    ) -> DecodedItem:
        if isinstance(result, (DownloadError, UnreadableFile)):
            return DecodedItem(failure=failure_of(row, str(result)))
        if isinstance(result, Exception):  # a bug, not a fault of the row: not hidden
            raise result
        data, st = result
        size, mtime_ns = (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)
        key = content_key(data)
        sample = sample_of(row, key)
        if row.is_url and self.stored is not None and key in self.stored:
            return DecodedItem(sample=sample)  # recorded, not decoded again
        file = None if row.is_url else FileRecord(row.target, size, mtime_ns, key, row.label)
        failure = failure_of(row, "", size, mtime_ns)
        return decode_item(
            data, self.preprocess, self.defer_jpegs, failure, file=file, sample=sample
        )


def make_table_loader(
    rows: RowList,
    preprocess: Preprocess,
    limits: DownloadLimits,
    *,
    store: FingerprintStore,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    defer_jpegs: bool = False,
) -> DataLoader:
    """Batches of the pending rows, fetched and decoded by up to ``workers`` processes."""
    return make_loader(
        TableDataset(rows, preprocess, limits, StoreProbe(store), defer_jpegs=defer_jpegs),
        batch_size=batch_size,
        workers=min(workers, max(1, len(rows) // _WORKER_RUN)) if workers else 0,
        pin_memory=pin_memory,
    )
