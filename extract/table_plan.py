"""Planning the rows of tables: which rows still need their image fetched and embedded.

Each table is streamed a block at a time (only the part's own blocks): a row whose image the
catalog knows (a file unchanged since it was hashed, a URL downloaded before) and whose key the
store holds costs a lookup, nothing more, and its label and caption are recorded when they
changed; a row that failed before is skipped unless a retry is asked for; every other row goes
to a :class:`RowList` on disk, so the pending rows cost no memory however many there are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import astuple
from pathlib import Path

import numpy as np

from headstart.cache.catalog import FailureRecord, FileCatalog, SampleRecord
from headstart.cache.keys import KeyMembership
from headstart.extract.files import stat_file
from headstart.extract.parts import Partition
from headstart.extract.plan import PlanCounts
from headstart.extract.tables import Table, TableRow, has_scheme

__all__ = ["RowList", "failure_of", "plan_tables", "sample_of", "url_keys"]


class RowList:
    """Pending :class:`TableRow` in ``directory/rows.jsonl``: appended while planning, then
    read in order (by each worker, its own runs of rows)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "rows.jsonl"
        self._count = 0
        self._writer = open(self.path, "w", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115

    def append(self, row: TableRow) -> None:
        self._writer.write(json.dumps(astuple(row)) + "\n")
        self._count += 1

    def seal(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[TableRow]:
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                yield TableRow(*json.loads(line))

    def __getstate__(self) -> dict:
        self.seal()
        return {"path": self.path, "_count": self._count, "_writer": None}


def plan_tables(
    tables: Sequence[Table],
    catalog: FileCatalog,
    cached: KeyMembership,
    rows: RowList,
    counts: PlanCounts,
    *,
    retry_failed: bool = False,
    partition: Partition | None = None,
) -> None:
    """Put the rows of ``tables`` still to embed on ``rows``; count the others.

    With a ``partition`` only its own blocks are read (see :mod:`.tables`), so ``listed`` and
    the other counts cover those, like a part's own shards.
    """
    for table in tables:
        for block in table.iter_blocks(partition):
            _plan_block(table, block, catalog, cached, rows, counts, retry_failed)


def _plan_block(
    table: Table,
    block: list[TableRow],
    catalog: FileCatalog,
    cached: KeyMembership,
    rows: RowList,
    counts: PlanCounts,
    retry_failed: bool,
) -> None:
    counts.listed += len(block)
    counts.listed_in_shards += len(block)
    paths = [row.target for row in block if not row.is_url]
    files = catalog.lookup(paths)
    urls = catalog.lookup_urls([row.target for row in block if row.is_url])
    failed = catalog.lookup_failures([row.target for row in block])
    recorded = catalog.lookup_samples(table.name, [row.sample for row in block])
    known: list[tuple[TableRow, str]] = []
    failures: list[FailureRecord] = []
    for row in block:
        if not row.target:
            failures.append(failure_of(row, "no path or URL in this row"))
            continue
        key, signature, stat_error = urls.get(row.target), (-1, -1), None
        if not row.is_url:
            st, stat_error = stat_file(row.target)
            signature = (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)
            entry = files.get(row.target)
            key = entry.key if entry and (entry.size, entry.mtime_ns) == signature else None
        failure = failed.get(row.target)
        if failure is not None and not retry_failed and (row.is_url or failure.matches(*signature)):
            counts.known_failures += 1
            continue
        if stat_error is not None:
            failures.append(FailureRecord(row.target, *signature, stat_error, row.label))
            continue
        if key is None:
            rows.append(row)
            counts.pending += 1
        else:
            known.append((row, key))
    in_store = cached.contains(np.array([key for _, key in known], "S64"))
    changed: list[SampleRecord] = []
    for (row, key), hit in zip(known, in_store, strict=True):
        if not hit:
            rows.append(row)
            counts.pending += 1
            continue
        counts.cached += 1
        record = sample_of(row, key)
        if recorded.get(row.sample) != record:  # new in the catalog, or relabelled
            changed.append(record)
    counts.new_failures += len(failures)
    if changed or failures:
        catalog.record(failures=failures, samples=changed)


def sample_of(row: TableRow, key: str) -> SampleRecord:
    return SampleRecord(row.table, row.sample, row.target, key, row.label, row.caption)


def failure_of(row: TableRow, reason: str, size: int = -1, mtime_ns: int = -1) -> FailureRecord:
    # A row with nothing to fetch has no name of its own: TABLE#ROW, as a tar member's.
    name = row.target or f"{row.table}#{row.sample}"
    return FailureRecord(name, size, mtime_ns, reason, row.label)


def url_keys(samples: Sequence[SampleRecord]) -> list[tuple[str, str]]:
    """``(url, key)`` of the samples downloaded from a URL: what the catalog's URL table keeps."""
    return [(s.member, s.key) for s in samples if has_scheme(s.member)]
