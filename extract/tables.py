"""Tables as sources: Parquet, CSV and JSONL files whose rows name images by path or URL.

A table has a ``path`` or a ``url`` column (either or both; a row uses its URL when it has
one), and may have ``label``, ``caption`` and ``id`` columns; every name can be changed (see
:class:`~headstart.extract.samples.SampleFields`). A relative path is relative to the table's
folder (for a table read from a URL, relative to that URL). A ``.csv`` is a table when its
header row names the path or URL column; otherwise it stays a manifest of ``path[,label]``
lines (:mod:`.sources`).

Tables are read as streams, in blocks: Parquet a row group at a time (in batches within it),
CSV and JSONL a fixed block of :data:`ROW_BLOCK` rows at a time. Blocks are also the unit of
``--part I/N``: part ``i`` takes blocks ``i, i + N, ...`` and never builds a row of the others
(a text table is still scanned line by line to find its blocks; a Parquet file's other row
groups are not read at all, unless it has fewer row groups than there are parts: then parts
take blocks of :data:`ROW_BLOCK` rows, as for text). A table whose path has a scheme
(``https://``, ``s3://``) is opened through fsspec.

A table that lacks a column it needs fails at once, in one line naming the column, before
any row is read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urljoin

from headstart.errors import HeadstartError
from headstart.extract.parts import Partition
from headstart.extract.samples import SampleFields
from headstart.pathnames import printable

__all__ = [
    "ROW_BLOCK",
    "TABLE_SUFFIXES",
    "Table",
    "TableColumns",
    "TableRow",
    "has_scheme",
    "is_table_source",
    "open_table",
]

TABLE_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".csv")
ROW_BLOCK = 4096  # rows per block of a CSV or JSONL table
_PARQUET_BATCH = 4096  # rows read at once within a row group
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def has_scheme(text: str) -> bool:
    """Whether ``text`` is a URL (``https://...``, ``s3://...``) rather than a local path."""
    return bool(_SCHEME.match(text))


@dataclass(frozen=True)
class TableColumns:
    """The columns a table's rows are read from. ``label``, ``caption`` and ``id`` are
    optional when left at their default names, required when named explicitly."""

    path: str = "path"
    url: str = "url"
    label: str = "label"
    caption: str = "caption"
    id: str = "id"
    required: frozenset[str] = frozenset()

    @classmethod
    def from_fields(cls, fields: SampleFields) -> TableColumns:
        """The columns ``--path-field``, ``--url-field``, ``--label-field``,
        ``--caption-field`` and ``--id-field`` name."""
        given = {
            "path": fields.path_field,
            "url": fields.url_field,
            "label": fields.label_field,
            "caption": fields.caption_field,
            "id": fields.id_field,
        }
        names = {role: name for role, name in given.items() if name}
        required = frozenset(name for role, name in names.items() if role not in ("path", "url"))
        return cls(**names, required=required)


@dataclass(frozen=True)
class TableRow:
    """One row: the table it came from, its ``sample`` name (the id column, or its row
    number), the image it names (an absolute path or a URL), and its label and caption."""

    table: str
    sample: str
    target: str
    label: str | None = None
    caption: str | None = None

    @property
    def is_url(self) -> bool:
        return has_scheme(self.target)


def is_table_source(source: str, columns: TableColumns | None = None) -> bool:
    """Whether ``source`` names a table: a ``.parquet``, ``.jsonl`` or ``.ndjson`` file, or a
    ``.csv`` whose header row names the path or URL column."""
    lower = source.lower().split("?", 1)[0]
    if lower.endswith((".parquet", ".jsonl", ".ndjson")):
        return True
    if not lower.endswith(".csv"):
        return False
    columns = columns or TableColumns()
    if not has_scheme(source) and not os.path.isfile(source):
        return False
    try:
        with _open_text(source) as f:
            header = next(csv.reader(f), [])
    except (OSError, csv.Error, UnicodeDecodeError, StopIteration):
        return False
    names = {name.strip() for name in header}
    return columns.path in names or columns.url in names


class Table:
    """A table source, opened and checked: its columns are there. Rows come in blocks.

    Example:
        >>> table = open_table("images.parquet", TableColumns())  # doctest: +SKIP
        >>> for rows in table.iter_blocks():
        ...     print(rows[0].target, rows[0].label)
    """

    def __init__(self, source: str, columns: TableColumns) -> None:
        self.name = source if has_scheme(source) else os.path.abspath(source)
        self.columns = columns
        self.kind = _kind(source)
        # Relative paths join onto this: the table's folder, or its URL.
        self._base = self.name if has_scheme(source) else os.path.dirname(self.name) + os.sep
        self._check(self._names())

    def iter_blocks(self, partition: Partition | None = None) -> Iterator[list[TableRow]]:
        """The table's rows, a block at a time, only the blocks ``partition`` owns. A table
        that turns out damaged part way is a :class:`HeadstartError` naming it."""
        blocks = self._parquet_blocks if self.kind == "parquet" else self._text_blocks
        try:
            yield from blocks(partition)
        except (csv.Error, OSError, ValueError) as exc:  # pyarrow's errors are these too
            if isinstance(exc, HeadstartError):
                raise
            raise HeadstartError(f"cannot read table {printable(self.name)}: {exc}") from None

    # -- columns ---------------------------------------------------------------------------

    def _names(self) -> list[str]:
        if self.kind == "parquet":
            with _open_binary(self.name) as f:
                return list(_parquet(f).schema_arrow.names)
        with _open_text(self.name) as f:
            if self.kind == "csv":
                return [name.strip() for name in next(csv.reader(f), [])]
            for line in f:  # JSONL: the first record's keys
                if line.strip():
                    record = _json_record(line, self.name, 1)
                    return list(record)
        return []

    def _check(self, names: list[str]) -> None:
        c = self.columns
        shown = ", ".join(names[:12]) or "none"
        if c.path not in names and c.url not in names:
            raise HeadstartError(
                f"table {printable(self.name)} has no {c.path!r} or {c.url!r} column (its "
                f"columns: {shown}); name the image column with --path-field or --url-field"
            )
        missing = sorted(c.required - set(names))
        if missing:
            raise HeadstartError(
                f"table {printable(self.name)} has no {missing[0]!r} column (its columns: {shown})"
            )

    def _wanted(self, names: list[str]) -> list[str]:
        c = self.columns
        return [n for n in dict.fromkeys((c.path, c.url, c.label, c.caption, c.id)) if n in names]

    # -- rows ------------------------------------------------------------------------------

    def _row(self, number: int, record: dict[str, Any]) -> TableRow:
        c = self.columns
        url, path = _text(record.get(c.url)), _text(record.get(c.path))
        target = url or path or ""
        if target and not has_scheme(target):
            target = (
                _join_url(self._base, target)
                if has_scheme(self._base)
                else os.path.abspath(os.path.join(self._base, os.path.expanduser(target)))
            )
        sample = _text(record.get(c.id)) or str(number)
        return TableRow(
            self.name, sample, target, _text(record.get(c.label)), _text(record.get(c.caption))
        )

    def _parquet_blocks(self, partition: Partition | None) -> Iterator[list[TableRow]]:
        with _open_binary(self.name) as f:
            parquet = _parquet(f)
            columns = self._wanted(parquet.schema_arrow.names)
            metadata = parquet.metadata
            # Fewer row groups than parts (one big group is common): then parts take row
            # blocks, as for text tables, reading the columns of every row but building only
            # their own rows.
            by_group = partition is None or metadata.num_row_groups >= partition.count
            first = 0
            for group in range(metadata.num_row_groups):
                count = metadata.row_group(group).num_rows
                if (
                    by_group
                    and partition is not None
                    and group % partition.count != partition.index
                ):
                    first += count
                    continue  # not read at all
                number = first
                for batch in parquet.iter_batches(
                    batch_size=_PARQUET_BATCH, row_groups=[group], columns=columns
                ):
                    numbers = range(number, number + batch.num_rows)
                    number += batch.num_rows
                    if not by_group and partition is not None:
                        mine = [i for i in numbers if _owns_row(partition, i)]
                        if not mine:
                            continue
                        batch = batch.take([i - numbers.start for i in mine])
                        numbers = mine
                    records = batch.to_pylist()
                    yield [self._row(i, r) for i, r in zip(numbers, records, strict=True)]
                first += count

    def _text_blocks(self, partition: Partition | None) -> Iterator[list[TableRow]]:
        with _open_text(self.name) as f:
            if self.kind == "csv":
                reader = csv.reader(f)
                header = [name.strip() for name in next(reader, [])]
                lines: Iterator[Any] = reader
            else:
                header = []
                lines = (line for line in f if line.strip())
            block: list[TableRow] = []
            for number, line in enumerate(lines):
                mine = partition is None or _owns_row(partition, number)
                if mine:  # others' lines are only counted: never parsed into rows
                    block.append(self._row(number, self._record(header, line, number)))
                if len(block) >= ROW_BLOCK or (block and not mine):
                    yield block
                    block = []
            if block:
                yield block

    def _record(self, header: list[str], line: Any, number: int) -> dict[str, Any]:
        if self.kind == "csv":
            return dict(zip(header, line, strict=False))
        return _json_record(line, self.name, number + 1)


def open_table(source: str, columns: TableColumns) -> Table:
    """The table at ``source``, its columns checked: a missing one is a
    :class:`HeadstartError` that names it. A table that cannot be read is one too."""
    try:
        return Table(source, columns)
    except HeadstartError:
        raise
    except FileNotFoundError:
        raise HeadstartError(f"source not found: {printable(source)!r}") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise HeadstartError(f"cannot read table {printable(source)}: {exc}") from None


def _join_url(base: str, target: str) -> str:
    """``target`` relative to the table at URL ``base``. ``urljoin`` resolves only the web's
    schemes and returns ``target`` unchanged for ``s3://`` or ``gs://``: those join as paths
    under the table's prefix."""
    scheme, rest = base.split("://", 1)
    if scheme.lower() in ("http", "https"):
        return urljoin(base, target)
    bucket, _, key = rest.partition("/")
    folder = posixpath.dirname(key)
    joined = posixpath.normpath(posixpath.join(folder, target)) if folder else target
    return f"{scheme}://{bucket}/{joined.lstrip('/')}"


def _owns_row(partition: Partition, number: int) -> bool:
    """Whether row ``number``'s block of :data:`ROW_BLOCK` rows is the part's."""
    return (number // ROW_BLOCK) % partition.count == partition.index


def _kind(source: str) -> str:
    lower = source.lower().split("?", 1)[0]
    if lower.endswith(".parquet"):
        return "parquet"
    return "csv" if lower.endswith(".csv") else "jsonl"


def _text(value: Any) -> str | None:
    """A cell as text: None for a missing or empty one; 3.0 as '3' (a class index)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = value if isinstance(value, str) else json.dumps(value)
    return text.strip() or None


def _json_record(line: str, name: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise HeadstartError(f"{printable(name)}:{number}: not a JSON record ({exc})") from None
    if not isinstance(record, dict):
        raise HeadstartError(f"{printable(name)}:{number}: expected a JSON object per line")
    return record


def _open_binary(source: str) -> IO[bytes]:
    if not has_scheme(source):
        return open(source, "rb")
    try:
        import fsspec
    except ImportError:
        raise HeadstartError(
            f"reading {printable(source)} needs fsspec: pip install 'headstart[http]'"
        ) from None
    try:
        return fsspec.open(source, "rb").open()
    except ImportError as exc:  # the scheme's filesystem package is missing
        raise HeadstartError(f"cannot open {printable(source)}: {exc}") from None


def _open_text(source: str) -> IO[str]:
    # A BOM is dropped; undecodable bytes are kept as the file-name bytes they likely are.
    return io.TextIOWrapper(
        _open_binary(source), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )


def _parquet(f: IO[bytes]):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HeadstartError("reading Parquet tables needs pyarrow: pip install pyarrow") from None
    return pq.ParquetFile(f)
