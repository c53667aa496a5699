"""Reading one listed file: never hangs, and the bytes always match the signature recorded.

A listing holds whatever a file tree holds: FIFOs and sockets and device files with image names,
links that loop, files that another program is writing, moving or replacing while we read. Each
of these becomes an :class:`UnreadableFile` with a one-line reason, never a hang or a crash.
"""

from __future__ import annotations

import os
import stat

from headstart.extract.remote import is_url, read_object, stat_object

__all__ = ["UnreadableFile", "not_a_file", "read_file", "stat_file"]

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
# A file still being written changes under us; after this many tries it is recorded as such
# (and read again on the next run, since its signature will differ by then).
_READ_ATTEMPTS = 3


class UnreadableFile(Exception):
    """The file cannot be used; ``str(error)`` is the reason for the failure ledger."""


def not_a_file(mode: int) -> str | None:
    """Why a stat ``mode`` is not a regular file (``"not a regular file: a FIFO"``), or None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"not a regular file: {kind}"


def stat_file(path: str) -> tuple[os.stat_result | None, str | None]:
    """The file's stat, and why it cannot be embedded (None when it may be). A FIFO, socket or
    device with an image name is refused here, before anything opens it. A URL (an object in
    a remote folder) is asked for its size and version instead (see :mod:`.remote`)."""
    if is_url(path):
        return stat_object(path)  # type: ignore[return-value]
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        return None, _cannot_read(exc)
    return st, not_a_file(st.st_mode)


def read_file(path: str) -> tuple[bytes, os.stat_result]:
    """The whole file and the stat signature that goes with exactly those bytes.

    Opened non-blocking, so a FIFO that slipped in after planning cannot hang a worker; read
    again when the file changed while it was read (its size or mtime moved, or the bytes do not
    add up to its size), so a key is never recorded with the signature of other contents.

    Example:
        >>> data, st = read_file("/data/cat.jpg")  # doctest: +SKIP
        >>> len(data) == st.st_size
        True
    """
    if is_url(path):
        try:
            return read_object(path)  # type: ignore[return-value]
        except OSError as exc:
            raise UnreadableFile(str(exc)) from None
    for _ in range(_READ_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise UnreadableFile(_cannot_read(exc)) from None
        try:
            before = os.fstat(fd)
            reason = not_a_file(before.st_mode)
            if reason is not None:
                raise UnreadableFile(reason)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
            after = os.fstat(fd)
        except OSError as exc:
            raise UnreadableFile(_cannot_read(exc)) from None
        finally:
            os.close(fd)
        if _signature(before) == _signature(after) and len(data) == after.st_size:
            return data, after
    raise UnreadableFile(f"file changed while it was read ({_READ_ATTEMPTS} tries)")


def _cannot_read(exc: OSError | ValueError) -> str:
    if isinstance(exc, ValueError):  # a NUL byte in a manifest's path
        return f"invalid path: {exc}"
    return f"cannot read file: {exc.strerror or exc}"


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev
