"""What an index directory's files were when they were built, checked cheaply or fully.

Hashing a 40 GB ``index.faiss`` at every ``knn`` or service start would cost minutes and read
the whole file into the page cache, defeating memory mapping. So each file's :class:`FileStamp`
records, at build, its size, its modification time (nanoseconds), the SHA-256 of the whole
file, and the SHA-256 of a few sampled 64 KiB blocks (the head, where FAISS keeps the header
and the coarse quantizer, the tail, and evenly strided blocks between). Loading checks size,
time and the sampled blocks: a few hundred KiB read whatever the size. ``headstart index
verify`` (or ``--verify``) reads every byte.

The quick check catches truncation, appending, any rewrite through the file system (which moves
the modification time) and damage inside a sampled block; it cannot see a byte changed outside
the sampled blocks by a writer that also put the old time back. That is what the full check is
for.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headstart.cache.keys import file_key

__all__ = ["SAMPLE_BLOCK", "FileStamp", "sampled_sha256", "stamp_file"]

SAMPLE_BLOCK = 64 * 1024
_STRIDED = 14  # blocks between the head and the tail: 16 in all, 1 MiB read at most


@dataclass(frozen=True)
class FileStamp:
    """A file as it was built: recorded in ``index.json`` under ``files``."""

    bytes: int
    mtime_ns: int
    sha256: str
    sampled_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Any) -> FileStamp | None:
        """The stamp ``record`` describes; None when it is not one (hand-edited, or older)."""
        try:
            return cls(
                int(record["bytes"]),
                int(record["mtime_ns"]),
                str(record["sha256"]),
                str(record["sampled_sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def quick_difference(self, path: str | os.PathLike[str]) -> str | None:
        """Why ``path`` is not the file this stamp recorded, by size, time and sampled blocks;
        None when those agree."""
        try:
            status = os.stat(path)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if status.st_size != self.bytes:
            return f"its size is {status.st_size} bytes, {self.bytes} when built"
        if sampled_sha256(path, status.st_size) != self.sampled_sha256:
            return "its content differs"
        if status.st_mtime_ns != self.mtime_ns:
            return "it was modified since it was built (its modification time differs)"
        return None

    def full_difference(self, path: str | os.PathLike[str]) -> str | None:
        """Why ``path`` does not hold exactly the bytes built; None when every byte agrees."""
        try:
            size = os.path.getsize(path)
            digest = file_key(str(path))
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if size != self.bytes:
            return f"its size is {size} bytes, {self.bytes} when built"
        if digest != self.sha256:
            return "its content differs"
        return None


def stamp_file(path: str | os.PathLike[str]) -> FileStamp:
    """Stamp a file just written (and no longer to be written)."""
    status = os.stat(path)
    return FileStamp(
        status.st_size,
        status.st_mtime_ns,
        file_key(str(path)),
        sampled_sha256(path, status.st_size),
    )


def _sample_offsets(size: int) -> list[int]:
    """Where the sampled blocks start: fixed by the size alone, so build and load agree."""
    if size <= (_STRIDED + 2) * SAMPLE_BLOCK:
        return list(range(0, size, SAMPLE_BLOCK))  # a small file: every byte
    last = size - SAMPLE_BLOCK
    step = last / (_STRIDED + 1)
    return [0, *(int(step * i) for i in range(1, _STRIDED + 1)), last]


def sampled_sha256(path: str | os.PathLike[str], size: int) -> str:
    """SHA-256 of the size and the sampled blocks of ``path``."""
    digest = hashlib.sha256(str(size).encode())
    with open(Path(path), "rb") as f:
        for offset in _sample_offsets(size):
            f.seek(offset)
            digest.update(f.read(SAMPLE_BLOCK))
    return digest.hexdigest()
