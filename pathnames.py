"""File names that are not valid UTF-8: kept exactly, shown readably.

On POSIX a file name is bytes. Python hands undecodable bytes back as lone surrogates (PEP 383,
``surrogateescape``): ``b"caf\\xe9.jpg"`` (Latin-1, as old archives and Windows shares write it)
becomes ``"caf\\udce9.jpg"``, which opens the right file but cannot be encoded as UTF-8, so
SQLite, Parquet and a strict terminal refuse it. These helpers carry the exact bytes where text
must be valid UTF-8, and turn them into ``\\xNN`` escapes where a person reads them.
"""

from __future__ import annotations

import codecs
import io
import os

__all__ = [
    "from_stored",
    "is_utf8",
    "printable",
    "readable_output",
    "to_stored",
]

_PRINTABLE_ERRORS = "headstart.printable"


def is_utf8(text: str) -> bool:
    """True unless ``text`` holds undecodable file-name bytes (lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_stored(text: str | None) -> str | bytes | None:
    """``text`` for a store that takes only valid UTF-8 text (SQLite): itself when valid, else
    its exact bytes (stored as a BLOB). :func:`from_stored` reverses it."""
    if text is None or is_utf8(text):
        return text
    return os.fsencode(text)


def from_stored(value: str | bytes | None) -> str | None:
    """The ``str`` that :func:`to_stored` was given."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def printable(text: str) -> str:
    """``text`` with undecodable bytes written as ``\\xNN``, for messages and tables.

    Example:
        >>> printable(os.fsdecode(b"caf\\xe9.jpg"))
        'caf\\\\xe9.jpg'
    """
    if is_utf8(text):
        return text
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _escape_surrogates(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start : error.end]
    escaped = "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}"
        for c in bad
    )
    return escaped, error.end


def readable_output(stream: object) -> None:
    """Let a text stream print any file name: the exact bytes when it goes to a file or a pipe
    (so ``headstart info --failures | xargs ...`` names the real files), ``\\xNN`` escapes on a
    terminal (as ``ls`` does). Streams that are not UTF-8 text wrappers are left alone."""
    if not isinstance(stream, io.TextIOWrapper):
        return
    if codecs.lookup(stream.encoding).name != "utf-8":
        return
    try:
        terminal = stream.isatty()
    except ValueError:  # closed
        return
    if terminal:
        try:
            codecs.lookup_error(_PRINTABLE_ERRORS)
        except LookupError:
            codecs.register_error(_PRINTABLE_ERRORS, _escape_surrogates)
    stream.reconfigure(errors=_PRINTABLE_ERRORS if terminal else "surrogateescape")
