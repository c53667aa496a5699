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
from headstart.cache.keys import KEY_DTYPE

__all__ = [
    "SHARD_FORMAT",
    "ShardInfo",
    "publish_shard",
    "read_shard_info",
    "read_shard_keys",
    "read_shard_rows",
    "shard_paths",
]

SHARD_FORMAT = "headstart-embeddings/1"
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
) -> Path:
    """Write one shard atomically and return its path.

    ``dtype="float16"`` halves the size; a block whose values overflow float16 is kept as
    float32 instead, so no value is ever stored as infinity.
    """
    if len(keys) != len(embeddings) or embeddings.ndim != 2:
        raise ValueError(f"{len(keys)} keys for embeddings of shape {embeddings.shape}")
    if dtype == "float16" and _overflows_float16(embeddings):
        dtype = "float32"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
    final = directory / name
    temporary = directory / f".tmp-{name}"
    try:
        with h5py.File(temporary, "w") as f:
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
        _fsync_path(temporary)
        os.replace(temporary, final)
        _fsync_path(directory)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
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
    """Rows of a shard (all when ``rows`` is None) as float32; ``rows`` must be sorted."""
    with _open(path) as f:
        data = f["embeddings"]
        if rows is None:
            block = data[()]
        elif len(rows) == 0:
            block = np.empty((0, data.shape[1]), dtype=data.dtype)
        elif len(rows) * 8 > len(data):
            # HDF5 point selection is slow; one contiguous read of a shard is not.
            block = data[()][np.asarray(rows, dtype=np.int64)]
        else:
            block = data[np.asarray(rows, dtype=np.int64)]
    return block.astype(np.float32, copy=False)


def _open(path: Path) -> h5py.File:
    # Shards never change once published, so HDF5's file locks buy nothing and fail on some
    # network filesystems.
    return h5py.File(path, "r", locking=False)


def _overflows_float16(embeddings: np.ndarray) -> bool:
    finite = embeddings[np.isfinite(embeddings)]
    return bool(finite.size) and float(np.abs(finite).max()) > _FLOAT16_MAX


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
