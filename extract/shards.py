"""Tar shards as sources: which sources name shards, the shard list they expand to, and the
one call that opens a shard as a byte stream.

A shard source is a path ending in ``.tar`` (or ``.tar.gz``, ``.tgz``, ``.tar.bz2``,
``.tar.xz``), a brace pattern as webdataset and img2dataset write them
(``shards/{00000..00099}.tar``, ``shards/{train,val}.tar``), a glob (``'shards/*.tar'``), or a
folder that holds shards and no images (its ``*.tar`` files, sorted). Expanding sources keeps
one small record per shard, never per image: a hundred million images in ten thousand shards
are ten thousand records.

Every shard is opened through :func:`open_shard`, whatever it names. A source with a scheme
(``s3://bucket/shards/{00000..00099}.tar``, ``https://host/shard-{0..9}.tar``,
``'s3://bucket/shards/*.tar'``, an ``s3://`` prefix that holds shards) is read through fsspec
(:mod:`.remote`): streamed, never downloaded to disk. A remote shard's signature is its size
and the version token of its ETag (where a local one has its mtime), so a rerun skips the
shards already read; one that answers 404 or access denied is not fatal: its reason goes to
the failure ledger when its turn comes, as a damaged shard's does.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from headstart.errors import HeadstartError
from headstart.extract import remote
from headstart.extract.sources import IMAGE_EXTENSIONS
from headstart.pathnames import printable

__all__ = [
    "SHARD_SUFFIXES",
    "ShardRef",
    "expand_braces",
    "is_shard_source",
    "list_shards",
    "open_shard",
    "shard_signature",
    "split_sources",
]

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHOICE = re.compile(r"\{([^{}]*,[^{}]*)\}")
_GLOB_CHARACTERS = frozenset("*?[")
# Reading a shard in big pieces: tar members are read whole anyway.
_OPEN_BUFFER = 1 << 20


@dataclass(frozen=True)
class ShardRef:
    """One shard to read: its absolute path (or URL) and its signature when listed (for a URL,
    ``mtime_ns`` is its version token; see :mod:`.remote`). ``problem``: why a remote shard
    cannot be read (404, access denied), recorded in the ledger when its turn comes; its
    signature is then (-1, -1)."""

    path: str
    size: int
    mtime_ns: int
    problem: str | None = None


def is_shard_source(source: str) -> bool:
    """Whether ``source`` names tar shards (a shard, a pattern of them, or a shard folder)."""
    if source.lower().endswith(SHARD_SUFFIXES):
        return True
    if remote.is_url(source):
        return _is_remote_shard_folder(source)
    return os.path.isdir(source) and _is_shard_folder(source)


def split_sources(sources: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the sources of image files, the sources of tar shards), each in the order given."""
    files, shards = [], []
    for source in sources:
        (shards if is_shard_source(source) else files).append(source)
    return files, shards


def expand_braces(pattern: str) -> Iterator[str]:
    """webdataset's brace notation: ``{000..099}`` (zero-padded as written) and ``{a,b}``,
    several of them multiplying out, left to right.

    Example:
        >>> list(expand_braces("s/{0..2}.tar"))
        ['s/0.tar', 's/1.tar', 's/2.tar']
    """
    found = [m for m in (_RANGE.search(pattern), _CHOICE.search(pattern)) if m is not None]
    if not found:
        yield pattern
        return
    match = min(found, key=lambda m: m.start())
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if match.re is _RANGE:
        low, high = match.group(1), match.group(2)
        if int(high) < int(low):
            raise HeadstartError(f"empty range {match.group(0)} in {printable(pattern)!r}")
        width = len(low) if low.startswith("0") else 0
        choices: Iterator[str] = (str(i).zfill(width) for i in range(int(low), int(high) + 1))
    else:
        choices = iter(match.group(1).split(","))
    for choice in choices:
        yield from expand_braces(head + choice + tail)


def list_shards(sources: Sequence[str]) -> list[ShardRef]:
    """The shards of ``sources``, in order, each once, with their stat signature.

    Every shard must exist before any is read: a missing one fails the run at once, in one
    line, rather than after hours of embedding.
    """
    shards: list[ShardRef] = []
    seen: set[str] = set()  # shard paths: one entry per shard
    for source in sources:
        if remote.is_url(source):
            for ref in _remote_shards(source):
                if ref.path not in seen:
                    seen.add(ref.path)
                    shards.append(ref)
            continue
        paths = _paths(source)
        if not paths:
            raise HeadstartError(f"no shards match {printable(source)!r}")
        for path in paths:
            path = os.path.abspath(path)
            if path in seen:
                continue
            seen.add(path)
            try:
                st = os.stat(path)
            except OSError as exc:
                raise HeadstartError(
                    f"shard not found: {printable(path)!r} ({exc.strerror}; from "
                    f"{printable(source)!r})"
                ) from None
            if not os.path.isfile(path):
                raise HeadstartError(f"shard {printable(path)!r} is not a file")
            shards.append(ShardRef(path, st.st_size, st.st_mtime_ns))
    return shards


def _paths(source: str) -> list[str]:
    """The shard paths one source names (a folder's, a pattern's expansion, or itself)."""
    if os.path.isdir(source):
        return sorted(
            os.path.join(source, name)
            for name in os.listdir(source)
            if name.lower().endswith(SHARD_SUFFIXES)
        )
    if os.path.exists(source):
        return [source]  # braces or glob characters in a real file name
    paths: list[str] = []
    for expanded in expand_braces(source):
        if _GLOB_CHARACTERS.intersection(expanded):
            paths.extend(sorted(glob.glob(expanded)))
        else:
            paths.append(expanded)
    return paths


def _remote_shards(source: str) -> list[ShardRef]:
    """The shards a URL source names: a brace pattern's expansion (each asked for its
    signature), a glob's matches, or the shards under a prefix."""
    urls: list[str] = []
    for expanded in expand_braces(source):
        fs, path = remote.filesystem(expanded)
        if _GLOB_CHARACTERS.intersection(path) and "http" not in remote.protocols(fs):
            found = fs.glob(path, detail=True)
            urls.extend(fs.unstrip_protocol(name) for name in sorted(found))
        else:
            urls.append(expanded)
    if not urls:
        raise HeadstartError(f"no shards match {printable(source)!r}")
    refs: list[ShardRef] = []
    for url, info in zip(urls, remote.info_many(urls), strict=True):
        if isinstance(info, BaseException):
            if not remote.is_answer(info):  # no server there: nothing would be read at all
                raise HeadstartError(
                    f"cannot reach {printable(url)!r}: {remote.describe_error(info)}"
                )
            refs.append(ShardRef(url, -1, -1, remote.describe_error(info)))
        elif info.get("type") == "directory":
            refs.extend(_remote_folder_shards(url))
        else:
            refs.append(ShardRef(url, *remote.remote_signature(info)))
    return refs


def _remote_folder_shards(url: str) -> list[ShardRef]:
    fs, path = remote.filesystem(url)
    entries = sorted(fs.ls(path, detail=True), key=lambda e: e["name"])
    refs = [
        ShardRef(
            remote.join_url(url, e["name"].rstrip("/").rsplit("/", 1)[-1]),
            *remote.remote_signature(e),
        )
        for e in entries
        if e.get("type") != "directory" and e["name"].lower().endswith(SHARD_SUFFIXES)
    ]
    if not refs:
        raise HeadstartError(f"no shards under {printable(url)!r}")
    return refs


def _is_remote_shard_folder(source: str) -> bool:
    """A remote prefix that holds ``.tar`` objects and neither images nor sub-folders."""
    fs, path = remote.filesystem(source)
    try:
        entries = fs.ls(path.rstrip("/"), detail=True)
    except Exception:  # not a prefix (or unreadable): the image listing reports it
        return False
    has_shards = False
    for entry in entries:
        name = entry["name"].rstrip("/").lower()
        if entry.get("type") == "directory" or os.path.splitext(name)[1] in IMAGE_EXTENSIONS:
            return False
        has_shards = has_shards or name.endswith(SHARD_SUFFIXES)
    return has_shards


def shard_signature(path: str) -> tuple[int, int]:
    """A shard's signature now: (size, mtime_ns) of a file, (size, version token) of an
    object; (-1, -1) when it cannot be had."""
    if remote.is_url(path):
        stat, _ = remote.stat_object(path)
        return (stat.st_size, stat.st_mtime_ns) if stat is not None else (-1, -1)
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return st.st_size, st.st_mtime_ns


def _is_shard_folder(folder: str) -> bool:
    """A folder of tar shards: it holds ``.tar`` files and neither images nor sub-folders,
    which would make it an image folder."""
    has_shards = False
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name.lower()
                if name.endswith(SHARD_SUFFIXES):
                    has_shards = True
                elif os.path.splitext(name)[1] in IMAGE_EXTENSIONS or entry.is_dir():
                    return False
    except OSError:
        return False  # the folder walk reports it
    return has_shards


def open_shard(path: str, size: int | None = None) -> BinaryIO:
    """The one way a shard is opened: a readable byte stream of it. ``size``: the shard's size
    as listed, which a remote shard is then opened without asking for again (should the shard
    change meanwhile, the reader's signature check after the read finds it).

    Example:
        >>> with open_shard("/data/shards/00000.tar") as stream:  # doctest: +SKIP
        ...     head = stream.read(512)
    """
    if remote.is_url(path):
        return remote.open_stream(path, size)  # streamed: nothing is downloaded to disk
    return open(path, "rb", buffering=_OPEN_BUFFER)  # the caller closes it
