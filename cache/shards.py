"""Immutable HDF5 shard files: written whole under a temporary name, then renamed into place.

An HDF5 file killed mid-write is unreadable, so a shard is never appended to once published:
readers only ever see complete files, and a crash leaves at worst a ``.tmp-*`` file behind.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from headstart import __version__
from headstart.atomic import atomic_path
from headstart.cache.keys import KEY_DTYPE

__all__ = [
    "SHARD_FORMAT",
    "SHARD_READ_ERRORS",
    "RowLayout",
    "ShardInfo",
    "as_float32",
    "copy_rows",
    "publish_shard",
    "read_shard_info",
    "read_shard_keys",
    "read_shard_rows",
    "row_layout",
    "shard_paths",
]

SHARD_FORMAT = "headstart-embeddings/1"
# What h5py raises for a damaged file: unreadable (OSError), a dataset or attribute missing
# (KeyError), or a malformed one (ValueError).
SHARD_READ_ERRORS = (OSError, KeyError, ValueError)
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's attributes say about it."""

    path: Path
    fingerprint: str
    count: int
    dim: int
    dtype: str


def shard_paths(directory: Path) -> list[Path]:
    """Published shards in creation order (their names start with a timestamp)."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if p.suffix == ".h5" and not p.name.startswith(".")
    )


def publish_shard(
    directory: Path,
    fingerprint: str,
    keys: np.ndarray,
    embeddings: np.ndarray,
    dtype: str = "float16",
    writer: str | None = None,
) -> Path:
    """Write one shard atomically and return its path, ``<time>-<writer>-<random>.h5``: the
    time first, so names sort in creation order; the writer id (this process's id when not
    given) says whose it is, so a compaction can keep to its own writer's shards.

    ``dtype="float16"`` halves the size; a block whose values overflow float16 is kept as
    float32 instead, so no value is ever stored as infinity.
    """
    if len(keys) != len(embeddings) or embeddings.ndim != 2:
        raise ValueError(f"{len(keys)} keys for embeddings of shape {embeddings.shape}")
    if dtype == "float16" and _overflows_float16(embeddings):
        dtype = "float32"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{writer or os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
    final = directory / name
    with atomic_path(final) as temporary, h5py.File(temporary, "w") as f:
        f.create_dataset("keys", data=np.asarray(keys, KEY_DTYPE))
        f.create_dataset("embeddings", data=embeddings.astype(dtype, copy=False))
        f.attrs.update(
            {
                "format": SHARD_FORMAT,
                "fingerprint": fingerprint,
                "count": len(keys),
                "dim": embeddings.shape[1],
                "dtype": dtype,
                "created_unix": time.time(),
                "headstart_version": __version__,
                "h5py_version": h5py.__version__,
                "hdf5_version": h5py.version.hdf5_version,
                "numpy_version": np.__version__,
            }
        )
    return final


def read_shard_info(path: Path) -> ShardInfo:
    with _open(path) as f:
        return ShardInfo(
            path=path,
            fingerprint=str(f.attrs["fingerprint"]),
            count=int(f.attrs["count"]),
            dim=int(f.attrs["dim"]),
            dtype=str(f.attrs["dtype"]),
        )


def read_shard_keys(path: Path) -> np.ndarray:
    with _open(path) as f:
        return f["keys"][()]


def read_shard_rows(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of a shard (all when ``rows`` is None), in the order given, as stored (float16 or
    float32); :func:`as_float32` converts."""
    with _open(path) as f:
        data = f["embeddings"]
        if rows is None:
            return data[()]
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(data) and np.array_equal(rows, np.arange(len(data))):
            return data[()]
        if len(rows) * 8 > len(data) or len(rows) == 0:
            # One contiguous read and a NumPy gather beat HDF5's point selection.
            return data[()][rows]
        # HDF5 selections must be increasing and unique: select those, then put them in order.
        unique, inverse = np.unique(rows, return_inverse=True)
        return data[unique][inverse]


@dataclass(frozen=True)
class RowLayout:
    """Where a shard's embeddings lie in its file, when HDF5 stored them as one contiguous,
    uncompressed array (as :func:`publish_shard` writes them): rows can then be read with
    ``pread`` at their byte offsets, without opening the file through HDF5."""

    offset: int
    count: int
    dim: int
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize


def row_layout(path: Path) -> RowLayout | None:
    """The shard's :class:`RowLayout`, or None when its rows must be read through HDF5
    (chunked, filtered, or empty)."""
    with _open(path) as f:
        data = f["embeddings"]
        offset = data.id.get_offset()
        if offset is None or data.chunks is not None or data.ndim != 2:
            return None
        return RowLayout(int(offset), int(data.shape[0]), int(data.shape[1]), data.dtype)


def read_rows_at(path: Path, layout: RowLayout, rows: np.ndarray) -> np.ndarray:
    """Rows of a shard by byte offset (see :class:`RowLayout`), in the order given, as stored.

    A training pass in source order asks each shard for a few scattered rows: opening the file
    through HDF5 and selecting points cost about 2 ms a shard, a ``pread`` a run of rows a
    hundredth of that."""
    unique, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    if not len(unique):
        return np.empty((0, layout.dim), layout.dtype)
    if unique[0] < 0 or unique[-1] >= layout.count:
        raise ValueError(f"rows {unique[0]}..{unique[-1]} outside {layout.count} in {path}")
    out = np.empty((len(unique), layout.dim), layout.dtype)
    size = layout.row_bytes
    fd = os.open(path, os.O_RDONLY)
    try:
        if len(unique) * 8 > unique[-1] - unique[0] + 1:
            # Dense: one read of the span, then a gather.
            span = _pread(fd, (unique[-1] - unique[0] + 1) * size, layout, unique[0], path)
            block = np.frombuffer(span, layout.dtype).reshape(-1, layout.dim)
            out[:] = block[unique - unique[0]]
        else:
            # Sparse: one read per run of consecutive rows, straight into the output's bytes.
            target = out.reshape(-1).view(np.uint8)
            breaks = np.flatnonzero(np.diff(unique) != 1) + 1
            for first, last in zip(
                np.concatenate([[0], breaks]), np.concatenate([breaks, [len(unique)]]), strict=True
            ):
                count = int(last - first)
                data = _pread(fd, count * size, layout, unique[first], path)
                target[int(first) * size : int(last) * size] = np.frombuffer(data, np.uint8)
    finally:
        os.close(fd)
    return out[inverse]


def _pread(fd: int, size: int, layout: RowLayout, row: int, path: Path) -> bytes:
    data = os.pread(fd, size, layout.offset + int(row) * layout.row_bytes)
    if len(data) != size:
        raise OSError(f"shard {path} ends early")
    return data


def copy_rows(out: np.ndarray, block: np.ndarray) -> None:
    """``out[:] = block`` converting to float32 on all cores (see :func:`as_float32`)."""
    import torch

    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(block)))


def as_float32(block: np.ndarray) -> np.ndarray:
    """float16 -> float32 through torch, which converts with vector instructions on all cores
    (NumPy's cast is several times slower)."""
    if block.dtype == np.float32:
        return block
    import torch  # only readers that convert pay for importing it (not `headstart info`)

    return torch.from_numpy(np.ascontiguousarray(block)).float().numpy()


def _open(path: Path) -> h5py.File:
    # Shards never change once published, so HDF5's file locks buy nothing and fail on some
    # network filesystems.
    return h5py.File(path, "r", locking=False)


def _overflows_float16(embeddings: np.ndarray) -> bool:
    finite = embeddings[np.isfinite(embeddings)]
    return bool(finite.size) and float(np.abs(finite).max()) > _FLOAT16_MAX
