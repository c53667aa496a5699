"""Sources of images: folders, manifests and single files, streamed as :class:`ImageItem`.

Listing never builds the whole list in memory: a folder of a million files is walked one
directory at a time, in a sorted (so reproducible) order.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from headstart.errors import HeadstartError

__all__ = ["IMAGE_EXTENSIONS", "MANIFEST_EXTENSIONS", "ImageItem", "iter_images"]

# torchvision's ImageFolder list, plus GIF.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
MANIFEST_EXTENSIONS = frozenset({".txt", ".csv"})


@dataclass(frozen=True)
class ImageItem:
    """One image to embed: an absolute path and, when the source gives one, its class label."""

    path: str
    label: str | None = None


def iter_images(sources: Iterable[str]) -> Iterator[ImageItem]:
    """Yield the images of each source in turn.

    A source is a folder (searched recursively; the immediate sub-folder names are the labels,
    as with torchvision's ``ImageFolder``), a ``.txt``/``.csv`` manifest of ``path[,label]``
    lines (relative paths are relative to the manifest), or an image file.

    Example:
        >>> [item.label for item in iter_images(["data/train"])]  # doctest: +SKIP
        ['cat', 'cat', 'dog']
    """
    for source in sources:
        if os.path.isdir(source):
            yield from _non_empty(_iter_folder(os.path.abspath(source)), source)
        elif os.path.isfile(source):
            if os.path.splitext(source)[1].lower() in MANIFEST_EXTENSIONS:
                yield from _non_empty(_iter_manifest(os.path.abspath(source)), source)
            else:
                yield ImageItem(os.path.abspath(source))
        else:
            raise HeadstartError(
                f"source not found: {source!r} (give a folder, a .txt/.csv manifest or image files)"
            )


def _non_empty(items: Iterator[ImageItem], source: str) -> Iterator[ImageItem]:
    count = 0
    for item in items:
        count += 1
        yield item
    if count == 0:
        raise HeadstartError(
            f"no images in {source!r}: "
            f"expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )


def _iter_folder(root: str) -> Iterator[ImageItem]:
    # Directory symlinks are followed (ImageFolder does too); the visited set stops cycles.
    visited: set[tuple[int, int]] = set()

    def walk(directory: str, label: str | None) -> Iterator[ImageItem]:
        try:
            st = os.stat(directory)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in visited:
            return
        visited.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                yield from walk(entry.path, entry.name if label is None else label)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                yield ImageItem(entry.path, label)

    # Files directly in the root have no class folder, hence no label.
    yield from walk(root, None)


def _iter_manifest(manifest: str) -> Iterator[ImageItem]:
    base = os.path.dirname(manifest)
    with open(manifest, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if line_no == 1 and row[0].strip().lower() == "path":
                continue  # a header line
            if len(row) > 2:
                raise HeadstartError(
                    f"{manifest}:{line_no}: expected 'path' or 'path,label', got {len(row)} fields"
                    " (quote paths that contain commas)"
                )
            path = os.path.join(base, row[0].strip())
            label = row[1].strip() if len(row) == 2 and row[1].strip() else None
            yield ImageItem(os.path.abspath(path), label)
