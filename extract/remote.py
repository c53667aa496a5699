"""Object storage and web servers as places images and shards are read from, through fsspec.

A source or path with a scheme (``s3://bucket/prefix``, ``gs://...``, ``https://host/x.tar``)
is read through the fsspec filesystem for that scheme; credentials and the endpoint come from
the standard environment, which the filesystems read themselves (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` for S3;
``GOOGLE_APPLICATION_CREDENTIALS`` for GCS).

An object has no inode or mtime to recognise it by on the next run. Its signature is its size
and a *version token*: a 63-bit number derived from its ETag (or GCS generation, or
Last-Modified, whichever the store gives), kept where a file's ``mtime_ns`` is kept. A rewritten
object gets a new ETag, hence a new token, and is read again; an unchanged one is not.

Everything that fails on the wire (404, access denied, a reset connection) is turned into an
``OSError`` or a one-line reason, the way a local file's failures are, so one missing object
costs that object only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from headstart.errors import HeadstartError, first_line
from headstart.extract.sources import ImageItem, ListingSkips
from headstart.pathnames import printable

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "ListedImageItem",
    "RemoteStat",
    "answer_status",
    "describe_error",
    "filesystem",
    "info_many",
    "is_answer",
    "is_url",
    "iter_remote_images",
    "join_url",
    "listed_stat",
    "open_stream",
    "protocols",
    "read_object",
    "remote_signature",
    "stat_object",
]

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# scheme -> (the package fsspec needs for it, the headstart extra that installs it)
_EXTRAS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gs"),
    "gcs": ("gcsfs", "gs"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
}
# Object stores cache listings per filesystem instance by default: a listing of a million
# objects would stay in memory for the life of the process.
_NO_LISTING_CACHE = frozenset({"s3", "s3a", "gs", "gcs"})
# Shards are streamed in pieces of this size (one ranged GET each on an object store).
STREAM_BLOCK = 8 << 20
# How many HEAD requests listing sends at once (shards named by a brace pattern).
_INFO_THREADS = 16
# The fields stores give an object's version in, in order of preference.
_VERSION_FIELDS = ("ETag", "etag", "generation", "md5Hash", "Last-Modified", "LastModified")


class RemoteStat(NamedTuple):
    """An object's signature, under the names a ``stat`` result has: its size and its version
    token (``st_mtime_ns``)."""

    st_size: int
    st_mtime_ns: int


@dataclass(frozen=True)
class ListedImageItem(ImageItem):
    """An image of a remote folder, with the signature its listing gave (``listed``)."""

    listed: RemoteStat | None = None


def is_url(path: str) -> bool:
    """Whether ``path`` names something through a scheme (``s3://``, ``https://``...).

    Example:
        >>> is_url("s3://bucket/shards/00000.tar"), is_url("shards/00000.tar")
        (True, False)
    """
    return _SCHEME.match(path) is not None


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path within it; a missing extra or an unknown
    scheme is a one-line :class:`HeadstartError` that says what to install."""
    scheme = _SCHEME.match(url)
    protocol = scheme.group(1).lower() if scheme else "file"
    try:
        import fsspec.core
    except ImportError:
        raise HeadstartError(
            f"reading {protocol}:// needs fsspec: pip install 'headstart[s3]' (or [gs], [http])"
        ) from None
    options: dict[str, Any] = {"use_listings_cache": False} if protocol in _NO_LISTING_CACHE else {}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError:
        package, extra = _EXTRAS.get(protocol, (None, None))
        if package is None:
            raise HeadstartError(
                f"reading {protocol}:// needs an fsspec filesystem that is not installed"
            ) from None
        raise HeadstartError(
            f"reading {protocol}:// needs {package}: pip install 'headstart[{extra}]'"
        ) from None
    except ValueError as exc:
        raise HeadstartError(f"cannot read {printable(url)!r}: {first_line(exc)}") from None


def remote_signature(info: dict) -> tuple[int, int]:
    """(size, version token) of an object from its fsspec ``info``; the token is 0 when the
    store names no version (a plain web server without ETag or Last-Modified)."""
    size = info.get("size")
    version = next((info[name] for name in _VERSION_FIELDS if info.get(name)), None)
    if version is None:
        return (int(size) if size is not None else -1), 0
    digest = hashlib.blake2b(str(version).encode(), digest_size=8).digest()
    return (int(size) if size is not None else -1), int.from_bytes(digest, "big") >> 1


def describe_error(exc: BaseException) -> str:
    """One line that says why a remote read failed (404, access denied, the connection)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    status = getattr(cause, "status", None)  # aiohttp's ClientResponseError
    if isinstance(status, int):
        message = getattr(cause, "message", "") or ""
        return f"HTTP {status} {message}".strip()
    if is_answer(exc) and isinstance(exc, FileNotFoundError):
        return "not found (404)"
    if is_answer(exc) and isinstance(exc, PermissionError):
        return f"access denied (403): {first_line(exc)}"
    return f"{type(cause).__name__}: {first_line(cause)}"


def is_answer(exc: BaseException) -> bool:
    """Whether a failed request got an answer about the object (404, access denied, another
    HTTP status), rather than no answer at all (no server there, a refused connection)."""
    if answer_status(exc) is not None:
        return True
    if exc.__cause__ is not None:  # a cause with no status: the request got no answer
        return False
    return isinstance(exc, (FileNotFoundError, PermissionError))


def answer_status(exc: BaseException) -> int | None:
    """The HTTP status an error (or its cause) carries: aiohttp's ``status``, botocore's
    ``response``."""
    for error in (exc, exc.__cause__):
        status = getattr(error, "status", None)
        if isinstance(status, int):
            return status
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
    return None


def stat_object(url: str) -> tuple[RemoteStat | None, str | None]:
    """The object's signature, and why it cannot be read (None when it can): the remote
    counterpart of :func:`~headstart.extract.files.stat_file`."""
    try:
        fs, path = filesystem(url)
        info = fs.info(path)
    except HeadstartError:
        raise
    except Exception as exc:  # whatever the transport raises: the reason goes to the ledger
        return None, f"cannot read object: {describe_error(exc)}"
    if info.get("type") == "directory":
        return None, "not an object: a folder"
    return RemoteStat(*remote_signature(info)), None


def read_object(url: str) -> tuple[bytes, RemoteStat]:
    """The whole object and its signature. Raises ``OSError`` with a one-line reason.

    One HEAD, then one GET: an object store replaces an object whole, so the GET returns one
    version; should it be a newer one than the HEAD saw, the next run finds a signature that
    differs from the recorded one and reads the object again.
    """
    fs, path = filesystem(url)
    try:
        signature = remote_signature(fs.info(path))
        data = fs.cat_file(path)
    except Exception as exc:  # whatever the transport raises: the reason goes to the ledger
        raise OSError(f"cannot read object: {describe_error(exc)}") from None
    if signature[0] not in (-1, len(data)):
        raise OSError(f"object changed while it was read ({signature[0]} bytes listed)")
    return data, RemoteStat(*signature)


def info_many(urls: list[str]) -> list[dict | BaseException]:
    """The fsspec ``info`` of each URL, in order, or the error that came instead; asked a few
    at a time, since a brace pattern can name thousands of shards."""

    def one(url: str) -> dict | BaseException:
        fs, path = filesystem(url)
        try:
            return fs.info(path)
        except Exception as exc:  # whatever the transport raises: the caller sorts it out
            return exc

    if len(urls) <= 1:
        return [one(url) for url in urls]
    with ThreadPoolExecutor(min(_INFO_THREADS, len(urls))) as pool:
        return list(pool.map(one, urls))


def open_stream(url: str, size: int | None = None) -> BinaryIO:
    """A readable stream of the object, read front to back, never written to disk: ranged
    GETs of :data:`STREAM_BLOCK` on an object store, one streamed GET from a web server.
    ``size``, where a listing gave it, spares an object store the HEAD that would ask for it.
    Transport errors surface as ``OSError``."""
    fs, path = filesystem(url)
    try:
        if "http" in protocols(fs):
            raw = fs.open(path, "rb", block_size=0)  # HTTPStreamFile: no range requests needed
        else:
            known = {"size": size} if size is not None and size >= 0 else {}
            raw = fs.open(path, "rb", block_size=STREAM_BLOCK, cache_type="readahead", **known)
    except Exception as exc:  # whatever the transport raises: the reason goes to the ledger
        raise OSError(describe_error(exc)) from None
    return _Guarded(raw)  # type: ignore[return-value]


def protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    """The schemes ``fs`` answers to (``("s3", "s3a")``)."""
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


class _Guarded(io.RawIOBase):
    """A remote file whose transport errors (aiohttp's, botocore's) are raised as ``OSError``,
    which the tar reader records as damage rather than crashing on."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            data = self._raw.read(len(buffer))
        except OSError:
            raise
        except Exception as exc:  # the transport's own error types
            raise OSError(describe_error(exc)) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def iter_remote_images(
    source: str, image_extensions: frozenset[str], skipped: ListingSkips
) -> Iterator[ImageItem]:
    """The images under a remote prefix, as a local folder's: sorted, one folder listing at a
    time, labelled by the first sub-folder; a single image object is itself."""
    fs, root = filesystem(source)
    try:
        info = fs.info(root)
    except FileNotFoundError:
        raise HeadstartError(f"source not found: {printable(source)!r}") from None
    except Exception as exc:
        raise HeadstartError(f"cannot list {printable(source)!r}: {describe_error(exc)}") from None
    # A web server's folder answers like a file; a trailing slash says it is one.
    if info.get("type") != "directory" and not source.endswith("/"):
        if _extension(root) in image_extensions:
            yield ImageItem(source)
            return
        raise HeadstartError(
            f"{printable(source)!r} is neither a folder nor an image "
            "(give a prefix, an image, or .tar shards)"
        )
    prefix = source.rstrip("/")
    root = root.rstrip("/")
    stack: list[tuple[Iterator[dict], str | None]] = [(iter(_listing(fs, root, skipped)), None)]
    while stack:
        entries, label = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        relative = entry["name"].rstrip("/")[len(root) + 1 :]
        name = relative.rsplit("/", 1)[-1]
        if not name or name.startswith("."):
            continue
        url = f"{prefix}/{relative}"
        if entry.get("type") == "directory":
            listing = _listing(fs, entry["name"].rstrip("/"), skipped)
            stack.append((iter(listing), name if label is None else label))
        elif _extension(name) in image_extensions:
            yield _listed_item(url, label, entry)


def _listed_item(url: str, label: str | None, entry: dict) -> ImageItem:
    """An image item that carries the signature its listing gave, so planning need not ask
    the store about each object again: one listing page answers for a thousand objects, where
    a HEAD answers for one. Only a listing that names a version counts (a web server's folder
    page names none)."""
    size, token = remote_signature(entry)
    if size < 0 or token == 0:
        return ImageItem(url, label)
    return ListedImageItem(url, label, RemoteStat(size, token))


def listed_stat(item: object) -> RemoteStat | None:
    """The signature a remote listing gave an item, or None (a local file, a web server's)."""
    return item.listed if isinstance(item, ListedImageItem) else None


def _listing(fs: AbstractFileSystem, path: str, skipped: ListingSkips) -> list[dict]:
    try:
        entries = fs.ls(path, detail=True)
    except Exception as exc:  # the folder is counted as unreadable; the walk goes on
        skipped.add(path, f"cannot list folder: {describe_error(exc)}")
        return []
    return sorted((e for e in entries if e["name"].rstrip("/") != path), key=lambda e: e["name"])


def _extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return ("." + base.rsplit(".", 1)[-1].lower()) if "." in base else ""
