"""Sources of images: folders, manifests and single files, streamed as :class:`ImageItem`.

Listing never builds the whole list in memory: a folder of a million files is walked one
directory at a time, in a sorted (so reproducible) order. No entry stops a listing: a folder
that cannot be read (no permission, a path longer than the system allows) is counted in
:class:`ListingSkips` with its reason and the walk goes on; a file with an image name that
turns out unreadable (a link loop, a FIFO) is listed, and planning records why it failed.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from headstart.errors import HeadstartError
from headstart.pathnames import printable

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "ImageItem",
    "ListingSkips",
    "iter_images",
]

log = logging.getLogger(__name__)

# torchvision's ImageFolder list, plus GIF.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
MANIFEST_EXTENSIONS = frozenset({".txt", ".csv"})
_SKIP_EXAMPLES = 10
_MANIFEST_FORMAT = "a manifest is a text file of path[,label] lines, saved as UTF-8"
_URL = re.compile(r"^(https?|s3|gs)://", re.IGNORECASE)


@dataclass(frozen=True)
class ImageItem:
    """One image to embed: an absolute path and, when the source gives one, its class label."""

    path: str
    label: str | None = None


@dataclass
class ListingSkips:
    """Entries a listing could not look into: how many, and the first few with their reason."""

    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < _SKIP_EXAMPLES:
            self.examples.append((path, reason))


def iter_images(sources: Iterable[str], skipped: ListingSkips | None = None) -> Iterator[ImageItem]:
    """Yield the images of each source in turn.

    A source is a folder (searched recursively; the immediate sub-folder names are the labels,
    as with torchvision's ``ImageFolder``), a ``.txt``/``.csv`` manifest of ``path[,label]``
    lines (relative paths are relative to the manifest), or an image file. Folders that cannot
    be listed are added to ``skipped`` (logged as warnings when it is not given).

    Example:
        >>> [item.label for item in iter_images(["data/train"])]  # doctest: +SKIP
        ['cat', 'cat', 'dog']
    """
    if skipped is None:
        skipped = _WarningSkips()
    for source in sources:
        if _is_url(source):  # an object-store prefix (or one image object), read through fsspec
            from headstart.extract.remote import iter_remote_images

            items = iter_remote_images(source, IMAGE_EXTENSIONS, skipped)
            yield from _non_empty(items, source, skipped)
        elif os.path.isdir(source):
            yield from _non_empty(_iter_folder(os.path.abspath(source), skipped), source, skipped)
        elif os.path.isfile(source):
            if os.path.splitext(source)[1].lower() in MANIFEST_EXTENSIONS:
                yield from _non_empty(_iter_manifest(os.path.abspath(source)), source, skipped)
            else:
                yield ImageItem(os.path.abspath(source))
        else:
            raise HeadstartError(
                f"source not found: {printable(source)!r} "
                "(give a folder, a .txt/.csv manifest, image files, .tar shards or a table: "
                ".parquet, .jsonl, .csv with a header)"
            )


def _is_url(source: str) -> bool:
    from headstart.extract.remote import is_url

    return is_url(source)


class _WarningSkips(ListingSkips):
    def add(self, path: str, reason: str) -> None:
        super().add(path, reason)
        log.warning("skipped at listing: %s: %s", printable(path), reason)


def _non_empty(
    items: Iterator[ImageItem], source: str, skipped: ListingSkips
) -> Iterator[ImageItem]:
    count, skipped_before = 0, skipped.count
    for item in items:
        count += 1
        yield item
    if count == 0:
        unreadable = skipped.count - skipped_before
        why = (
            f"{unreadable} folders could not be read ({skipped.examples[-1][1]})"
            if unreadable and skipped.examples
            else f"expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
        raise HeadstartError(f"no images in {printable(source)!r}: {why}")


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _iter_folder(root: str, skipped: ListingSkips) -> Iterator[ImageItem]:
    # Directory symlinks are followed (ImageFolder does too); the visited set stops cycles.
    visited: set[tuple[int, int]] = set()

    def listing(directory: str) -> list[tuple[str, bool | str]]:
        """The folder's entries, sorted: (name, is it a folder, or why that cannot be told).
        Names and flags rather than DirEntry objects: a folder of a million files is held
        whole to be sorted, at about half the bytes."""
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in visited:
                return []
            visited.add((st.st_dev, st.st_ino))
            found: list[tuple[str, bool | str]] = []
            with os.scandir(directory) as it:
                for entry in it:
                    try:
                        found.append((entry.name, entry.is_dir()))  # from readdir's d_type
                    except OSError as exc:
                        found.append((entry.name, _reason(exc)))
            found.sort(key=lambda item: item[0])
            return found
        except OSError as exc:
            skipped.add(directory, f"cannot list folder: {_reason(exc)}")
            return []

    # A stack of listings rather than recursion: real trees can be deeper than Python's
    # recursion limit. Files directly in the root have no class folder, hence no label.
    stack: list[tuple[str, Iterator[tuple[str, bool | str]], str | None]] = [
        (root, iter(listing(root)), None)
    ]
    while stack:
        directory, entries, label = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name, is_dir = entry
        if name.startswith("."):
            continue
        path = os.path.join(directory, name)
        is_image_name = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        if isinstance(is_dir, str):
            # A link that loops or points where we may not look: an image name goes on to
            # planning, which records the reason; anything else is counted here.
            if is_image_name:
                yield ImageItem(path, label)
            else:
                skipped.add(path, f"cannot tell file from folder: {is_dir}")
            continue
        if is_dir:
            stack.append((path, iter(listing(path)), name if label is None else label))
        elif is_image_name:
            yield ImageItem(path, label)


def _iter_manifest(manifest: str) -> Iterator[ImageItem]:
    base = os.path.dirname(manifest)
    # Undecodable bytes are kept as the file-name bytes they most likely are (a Latin-1
    # manifest names Latin-1 files); a BOM is dropped; csv handles CRLF with newline="".
    try:
        f = open(manifest, newline="", encoding="utf-8-sig", errors="surrogateescape")  # noqa: SIM115
    except OSError as exc:
        raise HeadstartError(
            f"cannot read manifest {printable(manifest)}: {_reason(exc)}"
        ) from None
    with f:
        rows = csv.reader(f)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                raise HeadstartError(
                    f"{printable(manifest)}:{rows.line_num}: {exc} ({_MANIFEST_FORMAT})"
                ) from None
            if any("\x00" in value for value in row):
                raise HeadstartError(
                    f"{printable(manifest)}:{rows.line_num}: NUL byte in the line (UTF-16? "
                    f"{_MANIFEST_FORMAT})"
                )
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if rows.line_num == 1 and row[0].strip().lower() == "path":
                continue  # a header line
            if len(row) > 2:
                raise HeadstartError(
                    f"{printable(manifest)}:{rows.line_num}: expected 'path' or 'path,label', "
                    f"got {len(row)} fields (quote paths that contain commas)"
                )
            if _URL.match(row[0].strip()):
                raise HeadstartError(
                    f"{printable(manifest)}:{rows.line_num}: a URL in a manifest of paths; to "
                    "download images, give a table: a .csv whose first line is url,label"
                )
            path = os.path.join(base, row[0].strip())
            label = row[1].strip() if len(row) == 2 and row[1].strip() else None
            yield ImageItem(os.path.abspath(path), label)
