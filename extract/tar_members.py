"""The file members of a tar, read from a stream: its ustar, pax and GNU headers parsed here.

Why not the standard library's ``tarfile``: in stream mode (``r|``) each member costs it a
``TarInfo`` with every field decoded, a file object to read through, and a read buffer grown by
concatenation. Beside a backbone on the same cores, that was most of what a tar shard cost over
a folder of files in ``bench/inputs.py``. A webdataset shard uses a small corner of the format:
regular files, some with a pax or GNU long-name record in front. This reads those, steps over
every other member the way ``tarfile`` does, and checks each header's checksum as it does.

What cannot be read on is raised as :class:`TarDamage` after the members before it were
yielded: the caller decides what that costs (for a shard, one ledger row).
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["BLOCK", "TarDamage", "TarMember", "iter_tar_members"]

BLOCK = 512
_REGULAR = frozenset(b"0\x007")  # regular, old-style regular, contiguous
_PAX_LOCAL = frozenset(b"xX")  # POSIX pax record for the next member; Solaris's older one
_PAX_GLOBAL = ord("g")
_GNU_LONG_NAME, _GNU_LONG_LINK, _GNU_SPARSE = ord("L"), ord("K"), ord("S")
# Member types with no data after the header (tarfile reads none for them, whatever the size
# field says): hard and symbolic links, devices, folders, fifos.
_NO_DATA = frozenset(b"123456")
# Records a long name or a pax header larger than this are not believed.
_MAX_RECORD = 1 << 20
_SKIP_CHUNK = 1 << 20
# What a failing read raises: a cut-off or corrupt compressed stream, a dropped connection.
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)
_SIGNED_CHECKSUM = struct.Struct("148b8x356b")


@dataclass(frozen=True, slots=True)
class TarMember:
    """A file member: its name, its size, and its bytes; or, where it was stepped over unread,
    None and why (larger than the caller's cap, or stored sparse)."""

    name: str
    size: int
    data: bytes | None
    unread: str | None = None


class TarDamage(Exception):
    """The archive cannot be read past this point; the message says why and where."""


class _Broken(Exception):
    """What broke, raised where it is found; :func:`iter_tar_members` adds how far it got."""


def iter_tar_members(stream: BinaryIO, max_member_bytes: int) -> Iterator[TarMember]:
    """The file members of the (uncompressed) tar read from ``stream``, in tar order.

    Folders, links and other special members are stepped over. The archive must end with its
    end-of-archive block: a stream that stops before one, or holds a header that is not a tar
    header, raises :class:`TarDamage` once the members before it are yielded.

    Example:
        >>> with open("shard-000.tar", "rb") as f:  # doctest: +SKIP
        ...     [m.name for m in iter_tar_members(f, 1 << 28)]
        ['000000.jpg', '000000.cls']
    """
    reader = _Reader(stream)
    members = 0
    local: dict[str, str] = {}  # pax or GNU records for the next member only
    global_: dict[str, str] = {}  # pax records for every member after them
    try:
        while True:
            offset = reader.offset
            block = reader.read(BLOCK)
            if len(block) < BLOCK:
                if offset == 0 and not block:
                    raise _Broken("empty file")
                raise TarDamage(f"truncated tar: no end-of-archive marker after byte {offset}")
            if not block.strip(b"\0"):
                return  # the end-of-archive block
            kind, size, name = _header(block, offset)
            if kind in _PAX_LOCAL or kind == _PAX_GLOBAL:
                records = _pax_records(reader.read_record(size), offset)
                (local if kind in _PAX_LOCAL else global_).update(records)
                continue
            if kind in (_GNU_LONG_NAME, _GNU_LONG_LINK):
                text = reader.read_record(size).split(b"\0", 1)[0]
                if kind == _GNU_LONG_NAME:
                    local["path"] = text.decode("utf-8", "surrogateescape")
                continue
            records = {**global_, **local} if global_ else local
            local = {}
            name = records.get("path", name)
            if "size" in records:
                size = _pax_size(records["size"], offset)
            if kind in _NO_DATA or (kind == 0 and name.endswith("/")):
                continue
            if kind == _GNU_SPARSE or (kind in _REGULAR and _is_pax_sparse(records)):
                if kind == _GNU_SPARSE:
                    reader.skip_sparse_map(block)
                reader.skip(_padded(size))
                yield TarMember(name, size, None, "stored as a sparse file, which is not read")
            elif kind not in _REGULAR:
                reader.skip(_padded(size))  # a type no image is stored as: stepped over
                continue
            elif size > max_member_bytes:
                reader.skip(_padded(size))
                yield TarMember(name, size, None, f"member of {size} bytes is too large")
            else:
                data = reader.read(size)
                if len(data) < size:
                    raise _Broken("unexpected end of data")
                reader.skip(_padded(size) - size)
                yield TarMember(name, size, data)
            members += 1
    except _Broken as exc:
        raise TarDamage(f"damaged tar after {members} members: {exc}") from exc


class _Reader:
    """Reads the stream, counting the bytes, and turns a failing read into :class:`_Broken`."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.offset = 0

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes: fewer only where the stream ends."""
        try:
            data = self._stream.read(count)
            while len(data) < count:  # a raw or network stream may answer in pieces
                more = self._stream.read(count - len(data))
                if not more:
                    break
                data += more
        except _READ_ERRORS as exc:
            raise _Broken(f"{exc or type(exc).__name__}") from exc
        self.offset += len(data)
        return data

    def read_record(self, size: int) -> bytes:
        """The data of a pax or GNU record member, and its padding."""
        if size > _MAX_RECORD:
            raise _Broken(f"a header record of {size} bytes")
        data = self.read(_padded(size))
        if len(data) < _padded(size):
            raise _Broken("unexpected end of data")
        return data[:size]

    def skip(self, count: int) -> None:
        """Reads past ``count`` bytes, a piece at a time."""
        while count > 0:
            piece = self.read(min(count, _SKIP_CHUNK))
            if not piece:
                raise _Broken("unexpected end of data")
            count -= len(piece)

    def skip_sparse_map(self, header: bytes) -> None:
        """The extension blocks an old GNU sparse header may have after it."""
        extended = header[482]
        while extended:
            block = self.read(BLOCK)
            if len(block) < BLOCK:
                raise _Broken("unexpected end of data")
            extended = block[504]


def _header(block: bytes, offset: int) -> tuple[int, int, str]:
    """(type, size, name) of a header block; :class:`_Broken` if it is not one."""
    try:
        checksum = _number(block[148:156])
        size = _number(block[124:136])
    except ValueError:
        checksum = size = -1
    unsigned = sum(block) - sum(block[148:156]) + 8 * ord(" ")
    if checksum != unsigned and checksum != sum(_SIGNED_CHECKSUM.unpack(block)) + 8 * ord(" "):
        raise _Broken(f"bad header at byte {offset}")
    if size < 0:
        raise _Broken(f"bad size at byte {offset}")
    name = block[:100].split(b"\0", 1)[0]
    # POSIX ustar keeps a path prefix in bytes 345-500; GNU tar ("ustar  ") keeps times there.
    if block[257:265] == b"ustar\x0000":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return block[156], size, name.decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A header's numeric field: octal text, or GNU's base-256 for large values."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    if field[0] == 0xFF:
        return -1  # a negative value: no size or checksum is negative
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    """The ``LENGTH KEY=VALUE\\n`` records of a pax header."""
    records, position = {}, 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position)
        try:
            length = int(data[position:space])
        except ValueError:
            length = 0
        record = data[space + 1 : position + length]
        if space < 0 or length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise _Broken(f"bad pax header at byte {offset}")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _pax_size(text: str, offset: int) -> int:
    try:
        size = int(text)
    except ValueError:
        size = -1
    if size < 0:
        raise _Broken(f"bad pax size at byte {offset}")
    return size


def _is_pax_sparse(records: dict[str, str]) -> bool:
    return any(key.startswith("GNU.sparse.") for key in records)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
