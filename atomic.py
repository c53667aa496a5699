"""Files that appear whole or not at all: written beside their place, flushed, then renamed.

A reader (another process, or a rerun after a crash) sees the old file or the complete new one,
never a torn one, and a write that fails leaves nothing behind. Every file headstart publishes
(shards, heads, indexes, checkpoints, fingerprints, run files) is written this way.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_path", "write_text_atomic"]

TEMPORARY_PREFIX = ".tmp-"


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error, it
    replaces ``path``, durably.

    The temporary keeps ``path``'s suffix (``np.savez`` and ``savefig`` choose the format by
    it), is hidden (``.tmp-*``: listings of published files skip it) and unique to this writer.

    Example:
        >>> with atomic_path("head/arrays.npz") as temporary:  # doctest: +SKIP
        ...     np.savez(temporary, coef=coef)
    """
    path = Path(path)
    temporary = path.with_name(
        f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}"
    )
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, path)
        fsync_path(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's or a directory's data (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
