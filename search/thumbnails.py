"""Small JPEG thumbnails of an index's items, so neighbours can be shown without server paths.

An index directory keeps them in two files: ``thumbnails.bin``, the JPEGs one after another in
row order, and ``thumbnails.npy``, the ``n + 1`` offsets into it (an index grown by ``index
add`` names them ``thumbnails.G.bin`` and ``thumbnails.G.npy`` after its generation G) (row ``i`` is
``bin[offsets[i]:offsets[i + 1]]``; an empty slice means the image could not be read). Two
files rather than one per item because an index may hold millions of items. Writing streams:
one chunk of images is read and shrunk at a time, on a few threads (Pillow's JPEG decoder
releases the GIL, and reduced-size DCT decoding keeps it cheap).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.atomic import atomic_path
from headstart.errors import HeadstartError
from headstart.extract.decode import DecodeError, decode_image
from headstart.pathnames import printable

__all__ = [
    "THUMBNAIL_SIDE",
    "ThumbnailStore",
    "ThumbnailSummary",
    "concatenate_thumbnails",
    "make_thumbnail",
    "thumbnail_of_file",
    "write_thumbnails",
]

THUMBNAIL_SIDE = 96
log = logging.getLogger(__name__)

STEM = "thumbnails"
_QUALITY = 80
_CHUNK = 256


@dataclass(frozen=True)
class ThumbnailSummary:
    """What ``write_thumbnails`` stored: recorded in ``index.json``."""

    side: int
    count: int
    missing: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "side": self.side,
            "count": self.count,
            "missing": self.missing,
            "bytes": self.bytes,
        }


def make_thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """An upright RGB JPEG, its longer side at most ``side`` px; DecodeError if unreadable."""
    image = decode_image(data, min_side=side)
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=_QUALITY, optimize=True)
    return out.getvalue()


def write_thumbnails(
    directory: str | os.PathLike[str],
    paths: Iterable[str],
    *,
    side: int = THUMBNAIL_SIDE,
    workers: int | None = None,
    stem: str = STEM,
    after: ThumbnailStore | None = None,
    missing: int = 0,
) -> ThumbnailSummary:
    """Write the thumbnails of ``paths`` (in row order) into ``directory``, as ``stem.bin``
    and ``stem.npy``; after a copy of ``after``'s, when given (an index growing, whose
    thumbnails ``missing`` of them lacked).

    An image that cannot be read any more (moved, damaged) gets an empty entry and is counted
    as missing; it never stops the index.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    offsets = [0]
    with (
        atomic_path(directory / f"{stem}.bin") as temporary,
        open(temporary, "wb") as out,
        ThreadPoolExecutor(workers, thread_name_prefix="headstart-thumbnails") as pool,
    ):
        if after is not None:
            with open(after.data_path, "rb") as old:
                shutil.copyfileobj(old, out)
            offsets = after.offsets.tolist()  # 8 bytes a row: what the store holds already
        for chunk in _chunks(paths, _CHUNK):
            for thumbnail in pool.map(lambda path: thumbnail_of_file(path, side), chunk):
                missing += thumbnail is None
                if thumbnail:
                    out.write(thumbnail)
                offsets.append(offsets[-1] + len(thumbnail or b""))
    with atomic_path(directory / f"{stem}.npy") as temporary:
        np.save(temporary, np.asarray(offsets, dtype=np.int64))
    return ThumbnailSummary(side, len(offsets) - 1, missing, offsets[-1])


class ThumbnailStore:
    """Reads one thumbnail at a time from an index directory; safe to share between threads."""

    def __init__(self, directory: str | os.PathLike[str], count: int, stem: str = STEM) -> None:
        directory = Path(directory)
        self.data_path = directory / f"{stem}.bin"
        try:
            self._offsets = np.load(directory / f"{stem}.npy", allow_pickle=False)
            size = self.data_path.stat().st_size
        except (OSError, ValueError) as exc:
            raise HeadstartError(f"{directory}: cannot read its thumbnails ({exc})") from None
        offsets = self._offsets
        if (
            offsets.ndim != 1
            or len(offsets) != count + 1
            or offsets[0] != 0
            or offsets[-1] != size
            or np.any(np.diff(offsets) < 0)
        ):
            raise HeadstartError(
                f"{directory}: thumbnails do not match the index (altered or damaged); "
                "rebuild it with headstart index build"
            )

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def offsets(self) -> np.ndarray:
        """The ``n + 1`` offsets of the thumbnails in the data file."""
        return self._offsets

    def get(self, row: int) -> bytes | None:
        """The JPEG of item ``row``; None when it has none (unreadable when indexed)."""
        if not 0 <= row < len(self):
            raise IndexError(row)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        if start == end:
            return None
        # A fresh descriptor per read: os.pread on a shared one would also do, but a thumbnail
        # read is rare next to a forward pass and this keeps no file open between requests.
        with open(self.data_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


def thumbnail_of_file(path: str, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """The thumbnail of the image at ``path``; None (and a log line) when it cannot be read,
    for example moved or damaged since it was embedded."""
    try:
        with open(path, "rb") as f:
            return make_thumbnail(f.read(), side)
    except (OSError, DecodeError) as exc:
        log.info("no thumbnail for %s: %s", printable(path), exc)
        return None


def _chunks(items: Iterable[str], size: int) -> Iterator[Sequence[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def concatenate_thumbnails(
    directory: str | os.PathLike[str], stores: Sequence[ThumbnailStore], stem: str = STEM
) -> tuple[int, int]:
    """Write the thumbnails of ``stores``, one after another, as ``stem.*`` in ``directory``
    (an index merged from parts); returns (count, bytes)."""
    directory = Path(directory)
    offsets = [np.zeros(1, dtype=np.int64)]
    written = 0
    with atomic_path(directory / f"{stem}.bin") as temporary, open(temporary, "wb") as out:
        for store in stores:
            with open(store.data_path, "rb") as f:
                shutil.copyfileobj(f, out)
            offsets.append(store.offsets[1:] + written)
            written += int(store.offsets[-1])
    with atomic_path(directory / f"{stem}.npy") as temporary:
        np.save(temporary, np.concatenate(offsets))
    return sum(len(s) for s in stores), written
