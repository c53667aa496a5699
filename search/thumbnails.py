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
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.atomic import atomic_path
from headstart.errors import HeadstartError
from headstart.models.decode import DecodeError, decode_image
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
_OFFSET_COPY = 1 << 20  # bytes of offsets copied at a time
_OFFSET_BLOCK = 1 << 17  # offsets read at a time


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
    as missing; it never stops the index. The offsets go to disk a chunk at a time, like the
    thumbnails: a hundred million rows hold no more memory than a thousand.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    with _OffsetsFile(directory) as offsets:
        with (
            atomic_path(directory / f"{stem}.bin") as temporary,
            open(temporary, "wb") as out,
            ThreadPoolExecutor(workers, thread_name_prefix="headstart-thumbnails") as pool,
        ):
            if after is not None:
                with open(after.data_path, "rb") as old:
                    shutil.copyfileobj(old, out)
                for block in after.offset_blocks():
                    offsets.extend(block, shift=0)
            else:
                offsets.extend(np.zeros(1, np.int64), shift=0)
            for chunk in _chunks(paths, _CHUNK):
                sizes = []
                for thumbnail in pool.map(lambda path: thumbnail_of_file(path, side), chunk):
                    missing += thumbnail is None
                    if thumbnail:
                        out.write(thumbnail)
                    sizes.append(len(thumbnail or b""))
                offsets.extend(np.cumsum(sizes, dtype=np.int64), shift=offsets.last)
        offsets.publish(directory / f"{stem}.npy")  # after the data it points into
    return ThumbnailSummary(side, offsets.count - 1, missing, offsets.last)


class _OffsetsFile:
    """Thumbnail offsets written to a temporary file as they come, then published as a
    ``.npy`` (the header, then the same bytes copied a block at a time)."""

    def __init__(self, directory: Path) -> None:
        # Closed on leaving the with block that holds it (see __exit__).
        self._file = tempfile.TemporaryFile(prefix=".offsets-", dir=directory)  # noqa: SIM115
        self.count = 0
        self.last = 0

    def __enter__(self) -> _OffsetsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def extend(self, values: np.ndarray, shift: int) -> None:
        """Append ``values + shift``."""
        if len(values):
            shifted = np.asarray(values, np.int64) + shift
            self._file.write(shifted.astype("<i8").tobytes())
            self.count += len(shifted)
            self.last = int(shifted[-1])

    def publish(self, path: Path) -> None:
        header = {"descr": "<i8", "fortran_order": False, "shape": (self.count,)}
        with atomic_path(path) as temporary, open(temporary, "wb") as out:
            np.lib.format.write_array_header_1_0(out, header)
            self._file.seek(0)
            shutil.copyfileobj(self._file, out, _OFFSET_COPY)


class ThumbnailStore:
    """Reads one thumbnail at a time from an index directory; safe to share between threads.

    The offsets are mapped, not read: a lookup touches the page that holds its two offsets,
    so a store of a hundred million thumbnails costs a service no more than a small one.
    """

    def __init__(self, directory: str | os.PathLike[str], count: int, stem: str = STEM) -> None:
        directory = Path(directory)
        self.data_path = directory / f"{stem}.bin"
        try:
            self._offsets = np.load(directory / f"{stem}.npy", mmap_mode="r", allow_pickle=False)
            self._size = self.data_path.stat().st_size
        except (OSError, ValueError) as exc:
            raise HeadstartError(f"{directory}: cannot read its thumbnails ({exc})") from None
        offsets = self._offsets
        # Each lookup checks its own pair (see get); here only what costs nothing to read.
        if (
            offsets.ndim != 1
            or offsets.dtype != np.int64
            or len(offsets) != count + 1
            or offsets[0] != 0
            or offsets[-1] != self._size
        ):
            raise HeadstartError(self._damaged(directory))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def offsets(self) -> np.ndarray:
        """The ``n + 1`` offsets of the thumbnails in the data file (mapped, read-only)."""
        return self._offsets

    def offset_blocks(self) -> Iterator[np.ndarray]:
        """The offsets in order, a block at a time, as arrays of their own."""
        for start in range(0, len(self._offsets), _OFFSET_BLOCK):
            yield np.array(self._offsets[start : start + _OFFSET_BLOCK])

    def get(self, row: int) -> bytes | None:
        """The JPEG of item ``row``; None when it has none (unreadable when indexed)."""
        if not 0 <= row < len(self):
            raise IndexError(row)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        if not 0 <= start <= end <= self._size:
            raise HeadstartError(self._damaged(self.data_path.parent))
        if start == end:
            return None
        # A fresh descriptor per read: os.pread on a shared one would also do, but a thumbnail
        # read is rare next to a forward pass and this keeps no file open between requests.
        with open(self.data_path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    @staticmethod
    def _damaged(directory: Path) -> str:
        return (
            f"{directory}: thumbnails do not match the index (altered or damaged); "
            "rebuild it with headstart index build"
        )


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
    with _OffsetsFile(directory) as offsets:
        offsets.extend(np.zeros(1, np.int64), shift=0)
        with atomic_path(directory / f"{stem}.bin") as temporary, open(temporary, "wb") as out:
            for store in stores:
                with open(store.data_path, "rb") as f:
                    shutil.copyfileobj(f, out)
                shift = offsets.last
                for i, block in enumerate(store.offset_blocks()):
                    offsets.extend(block[1:] if i == 0 else block, shift=shift)
        offsets.publish(directory / f"{stem}.npy")  # after the data it points into
    return offsets.count - 1, offsets.last
