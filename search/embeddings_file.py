"""Vectors from an embeddings file, read a block at a time: ``index build --from-embeddings``.

A ``.npy`` (2-D, float) is memory-mapped: a block or a sample reads only its rows. A Parquet
file's vector column (a list or fixed-size list of floats) is read a batch at a time with
pyarrow; a sample of rows (to train quantizers, or to tune) takes one pass over the column.
Either way no more than a block of vectors is in memory at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.errors import HeadstartError
from headstart.search.exact import l2_normalize
from headstart.search.vectors import Vectors

__all__ = ["ParquetVectors", "embeddings_fingerprint", "open_embeddings"]


def open_embeddings(
    path: str | os.PathLike[str], vector_column: str = "embedding", block_rows: int = 65536
) -> Vectors | ParquetVectors:
    """The vectors of a ``.npy`` or ``.parquet`` file, to build an index from."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise HeadstartError(f"cannot read {path} as a .npy array ({exc})") from None
        if array.ndim != 2 or array.dtype.kind != "f" or not len(array):
            raise HeadstartError(
                f"{path} holds a {array.dtype} array of shape {array.shape}; "
                "want vectors, one float row each"
            )
        return Vectors(array, block_rows=block_rows)
    if path.suffix == ".parquet":
        return ParquetVectors(path, vector_column, block_rows)
    raise HeadstartError(f"{path}: give embeddings as a .npy or a .parquet file")


def embeddings_fingerprint(path: str | os.PathLike[str], dim: int) -> Fingerprint:
    """What an index of a file's embeddings records as its fingerprint: the file's name and
    the width. Its model is not known, so such an index is queried by vector or by its own
    items (``--duplicates``), not by images."""
    name = Path(path).name
    return Fingerprint({"model": f"embeddings:{name}", "dim": dim}, {"file": str(path)})


class ParquetVectors:
    """L2-normalised vectors of one column of a Parquet file, a batch at a time."""

    def __init__(self, path: Path, column: str, block_rows: int = 65536) -> None:
        import pyarrow.parquet as pq

        self.path, self.column, self.block_rows = path, column, block_rows
        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own types for files that are not Parquet
            raise HeadstartError(f"cannot read {path} as Parquet ({exc})") from None
        names = self._file.schema_arrow.names
        if column not in names:
            raise HeadstartError(
                f"{path} has no column {column!r} (it has {', '.join(names)}); "
                "name the vectors' column with --vector-column"
            )
        self.count = self._file.metadata.num_rows
        first = next(self._batches(1), None)
        if first is None:
            raise HeadstartError(f"{path} holds no rows")
        self.dim = first.shape[1]

    def _batches(self, rows: int) -> Iterator[np.ndarray]:
        for batch in self._file.iter_batches(batch_size=rows, columns=[self.column]):
            values = batch.column(0)
            try:
                flat = values.flatten().to_numpy(zero_copy_only=False)
            except (AttributeError, ValueError) as exc:
                raise HeadstartError(
                    f"{self.path}: column {self.column!r} holds no lists of floats ({exc})"
                ) from None
            if len(values) and flat.size % len(values):
                raise HeadstartError(f"{self.path}: the vectors in {self.column!r} differ in width")
            yield flat.reshape(len(values), -1)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for block in self._batches(self.block_rows):
            if block.shape[1] != self.dim:
                raise HeadstartError(f"{self.path}: the vectors in {self.column!r} differ in width")
            yield start, l2_normalize(block)
            start += len(block)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (sorted), in one pass over the column."""
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for start, block in self.blocks():
            lo, hi = np.searchsorted(rows, [start, start + len(block)])
            out[lo:hi] = block[rows[lo:hi] - start]
        return out
