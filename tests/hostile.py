"""Builders for the awkward entries real file trees hold (links that loop, FIFOs, names that are
not UTF-8, trees deeper than the system's path limit), shared by the hostile-tree tests."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from pathlib import Path

from helpers import write_image

# Latin-1 names, as old archives and Windows shares write them: not valid UTF-8.
LATIN1_FOLDER = b"caf\xe9"
LATIN1_FILE = b"cr\xe8me br\xfbl\xe9e.jpg"


def fs(path: Path | bytes, *parts: bytes) -> bytes:
    """A file-system path as bytes, with byte-string parts joined on."""
    base = os.fsencode(path)
    return os.path.join(base, *parts) if parts else base


def write_image_bytes(path: bytes, seed: int) -> bytes:
    """``write_image`` for a path that may not be valid UTF-8."""
    write_image(Path(os.fsdecode(path)), seed)
    return path


def write_image_deep(root: Path, levels: int, name: bytes, seed: int) -> None:
    """``levels`` nested folders called ``name`` below ``root`` and an image at the bottom,
    made relative to an open folder, never naming the whole path: it may be longer than the
    system allows (PATH_MAX)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (seed % 256, 80, 160)).save(buffer, format="JPEG")
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open(b"bottom.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            f.write(buffer.getvalue())
    finally:
        os.close(fd)


def remove_deep_tree(root: Path, levels: int, name: bytes) -> None:
    """Remove what :func:`write_image_deep` made, bottom up, without recursion: Python 3.11's
    ``shutil.rmtree`` (and so pytest's clean-up of old temporary folders) recurses once per
    level and fails on trees deeper than the recursion limit."""
    fds = [os.open(root, os.O_RDONLY)]
    try:
        for _ in range(levels):
            fds.append(os.open(name, os.O_RDONLY, dir_fd=fds[-1]))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(b"bottom.jpg", dir_fd=fds[-1])
        while len(fds) > 1:
            os.close(fds.pop())
            os.rmdir(name, dir_fd=fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def make_unix_socket(path: Path) -> socket.socket:
    """A listening UNIX socket at ``path`` (keep the returned object alive while testing)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def drop_root_file_access() -> None:
    """For ``preexec_fn``: the child keeps uid 0 but loses the capabilities that let root
    ignore file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so permission tests run
    as they would for any other user."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for capability in (1, 2):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def summary_counts(output: str) -> dict[str, int]:
    """The numbers on extract's summary line: listed, embedded, from cache, failed, and
    skipped at listing when there were any."""
    line = next(line for line in output.splitlines() if line.startswith("listed "))
    found = {}
    for part in line.split(" · "):
        words = part.split()
        if words and words[-1].isdigit():
            found[" ".join(words[:-1])] = int(words[-1])
    return found
