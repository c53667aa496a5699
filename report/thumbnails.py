"""Thumbnails of the images a page names, whether files or members of tar shards.

Files are read and shrunk on a few threads (Pillow's decoders release the GIL). A member of a
tar shard (named ``SHARD#MEMBER``, as the cache and audits name it) can only be reached by
reading its shard as a stream, so the wanted members are grouped by shard and each shard is read
once, keeping only the wanted members' bytes. An image that cannot be read (moved, damaged, a
shard gone) has no thumbnail; the page says so rather than failing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from headstart.extract.samples import TarSample, iter_tar_samples
from headstart.extract.shards import SHARD_SUFFIXES, open_shard
from headstart.models.decode import DecodeError
from headstart.pathnames import printable
from headstart.search.thumbnails import THUMBNAIL_SIDE, make_thumbnail, thumbnail_of_file

__all__ = ["split_member", "thumbnails_of"]

log = logging.getLogger(__name__)

_WORKERS = 4
_MEMBER_MARK = "#"


def split_member(name: str) -> tuple[str, str] | None:
    """``/data/shard-0.tar#dir/0001.jpg`` -> (the shard, the member); None for a plain file.

    Shard paths and member names may both hold ``#``: the first split whose left side is a
    shard file on disk decides. A file whose own name holds ``#`` is a file."""
    if _MEMBER_MARK not in name or os.path.isfile(name):
        return None
    at = name.find(_MEMBER_MARK)
    while at >= 0:
        shard = name[:at]
        if shard.lower().endswith(SHARD_SUFFIXES) and os.path.isfile(shard):
            return shard, name[at + 1 :]
        at = name.find(_MEMBER_MARK, at + 1)
    return None


def thumbnails_of(names: Iterable[str], side: int = THUMBNAIL_SIDE) -> dict[str, bytes | None]:
    """The JPEG thumbnail of every image named (a path, or ``SHARD#MEMBER``); None for
    those that cannot be read."""
    files: list[str] = []
    members: dict[str, set[str]] = {}  # shard -> its wanted members
    for name in dict.fromkeys(names):
        split = split_member(name)
        if split is None:
            files.append(name)
        else:
            members.setdefault(split[0], set()).add(split[1])
    found: dict[str, bytes | None] = {}
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="headstart-page-thumbnails") as pool:
        for name, thumbnail in zip(
            files, pool.map(lambda path: thumbnail_of_file(path, side), files), strict=True
        ):
            found[name] = thumbnail
    for shard, wanted in members.items():
        for member, data in _read_members(shard, wanted).items():
            found[f"{shard}{_MEMBER_MARK}{member}"] = _shrunk(data, side, shard, member)
        for member in wanted:
            found.setdefault(f"{shard}{_MEMBER_MARK}{member}", None)
    return found


def _read_members(shard: str, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the ``wanted`` members of ``shard``, in one pass; those missing are
    left out (the shard was rewritten or is damaged)."""
    found: dict[str, bytes] = {}
    try:
        with open_shard(shard) as stream:
            for event in iter_tar_samples(stream):
                if not isinstance(event, TarSample):
                    continue
                for extension, member in event.names.items():
                    if member in wanted:
                        found[member] = event.data[extension]
                if len(found) == len(wanted):
                    break  # the rest of the shard holds nothing wanted
    except OSError as exc:
        log.info("no thumbnails from %s: %s", printable(shard), exc)
    return found


def _shrunk(data: bytes, side: int, shard: str, member: str) -> bytes | None:
    try:
        return make_thumbnail(data, side)
    except DecodeError as exc:
        log.info("no thumbnail for %s#%s: %s", printable(shard), printable(member), exc)
        return None
