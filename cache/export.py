"""Export a fingerprint's embeddings with paths and labels, for use outside headstart.

``npy``: ``OUT.npy`` (float32, N x D) beside ``OUT.csv`` (row, path, label, key, caption);
``parquet``: one file with path, label, key, caption and a fixed-size list column
``embedding``. Both are written in blocks, so the export never holds all vectors in memory.

Image files come first, in path order, then the samples of tar shards, by shard and sample
key, named ``SHARD#MEMBER`` and with the caption the sample came with.

File names that are not valid UTF-8 keep their exact bytes: the CSV holds them as they are
(read it back with ``errors="surrogateescape"``); Parquet strings must be UTF-8, so its
``path`` column shows them with ``\\xNN`` escapes and ``path_bytes`` holds every path exactly.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from headstart.cache.store import FingerprintStore
from headstart.errors import HeadstartError
from headstart.pathnames import printable

__all__ = ["ExportResult", "ExportRow", "export_embeddings", "export_rows"]

_BLOCK = 8192


@dataclass(frozen=True)
class ExportResult:
    rows: int
    dim: int
    files: list[Path]


def export_embeddings(
    store: FingerprintStore, out: str | os.PathLike[str], fmt: str = "npy"
) -> ExportResult:
    """Write one row per known file path whose content is in ``store``.

    Example:
        >>> export_embeddings(EmbeddingCache(".headstart").open(), "emb.npy")  # doctest: +SKIP
        ExportResult(rows=1500, dim=512, files=[PosixPath('emb.npy'), PosixPath('emb.csv')])
    """
    if not len(store):
        raise HeadstartError(f"fingerprint {store.fingerprint.id} holds no embeddings yet")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        return _export_npy(store, out.with_suffix(".npy"))
    if fmt == "parquet":
        return _export_parquet(store, out.with_suffix(".parquet"))
    raise HeadstartError(f"unknown export format {fmt!r}; use npy or parquet")


class ExportRow(NamedTuple):
    """One exported row: the image's name (path, URL or ``SHARD#MEMBER``), label, content key
    and caption."""

    path: str
    label: str | None
    key: str
    caption: str | None


def export_rows(store: FingerprintStore) -> Iterator[list[ExportRow]]:
    """Stat-index rows, then tar samples, whose key the store holds, a block at a time."""
    with store.cache.catalog() as catalog:
        files = (
            [ExportRow(r.path, r.label, r.key, None) for r in chunk]
            for chunk in catalog.iter_files(_BLOCK)
        )
        samples = (
            [ExportRow(r.name, r.label, r.key, r.caption) for r in chunk]
            for chunk in catalog.iter_samples(_BLOCK)
        )
        for chunk in itertools.chain(files, samples):
            inside = store.contains(np.array([r.key for r in chunk], dtype="S64"))
            rows = [record for record, hit in zip(chunk, inside, strict=True) if hit]
            if rows:
                yield rows


def _export_npy(store: FingerprintStore, path: Path) -> ExportResult:
    total = sum(len(rows) for rows in export_rows(store))
    dim = int(store.dim or 0)
    table_path = path.with_suffix(".csv")
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, dim))
    written = 0
    with open(table_path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        table = csv.writer(f)
        table.writerow(["row", "path", "label", "key", "caption"])
        for rows in export_rows(store):
            if written + len(rows) > total:
                raise HeadstartError("the cache changed during export; run it again")
            matrix[written : written + len(rows)] = store.get([r.key for r in rows])
            table.writerows(
                [written + i, r.path, r.label or "", r.key, r.caption or ""]
                for i, r in enumerate(rows)
            )
            written += len(rows)
    matrix.flush()
    del matrix
    return ExportResult(written, dim, [path, table_path])


def _export_parquet(store: FingerprintStore, path: Path) -> ExportResult:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HeadstartError(
            "Parquet export needs pyarrow: pip install 'headstart[parquet]'"
        ) from None
    dim = int(store.dim or 0)
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("path_bytes", pa.binary()),
            ("label", pa.string()),
            ("key", pa.string()),
            ("caption", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ],
        metadata={"fingerprint": store.fingerprint.id},
    )
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        for rows in export_rows(store):
            vectors = store.get([r.key for r in rows])
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
            batch = pa.record_batch(
                [
                    pa.array([printable(r.path) for r in rows]),
                    pa.array([os.fsencode(r.path) for r in rows], pa.binary()),
                    pa.array([None if r.label is None else printable(r.label) for r in rows]),
                    pa.array([r.key for r in rows]),
                    pa.array([None if r.caption is None else printable(r.caption) for r in rows]),
                    embedding,
                ],
                schema=schema,
            )
            writer.write_batch(batch)
            written += len(rows)
    return ExportResult(written, dim, [path])
