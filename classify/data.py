"""Labelled embeddings from image sources, through the cache, and the validation split.

The sources are extracted first (a no-op for what the cache holds), then read back: every
image's content key comes from the stat index, its vector from the fingerprint's shards.
Files that could not be embedded are left out and counted.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.cache.store import EmbeddingCache, FingerprintStore
from headstart.classify.blocks import Blocks, CachedBlocks, PlacedKeys
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, ExtractSummary, extract
from headstart.extract.labelled import LabelledRow, ListedCount, iter_labelled
from headstart.extract.samples import SampleFields
from headstart.extract.sources import ListingSkips

_LIST_CHUNK = 16384  # images looked up in the stat index at once
_LOOKUP_ROWS = 1 << 18  # keys placed in the key index at once (a listing's rows held meanwhile)

__all__ = [
    "Embedded",
    "Planned",
    "UsableChunk",
    "class_counts",
    "embed_sources",
    "plan_rows",
    "plan_sources",
    "read_embedded",
    "split_planned",
    "stratified_split",
    "stratified_split_codes",
    "train_and_validation",
    "usable_chunks",
]


@dataclass
class Embedded:
    """A source's usable images, in source order: paths, labels, content keys, and their
    vectors, read from the store on first use of ``X`` (an index build streams them instead)."""

    labels: np.ndarray
    paths: list[str]
    keys: np.ndarray
    fingerprint: Fingerprint
    store: FingerprintStore
    missing: int = 0
    summary: ExtractSummary | None = None
    _X: np.ndarray | None = field(default=None, repr=False)

    @property
    def X(self) -> np.ndarray:
        if self._X is None:
            self._X = self.store.get(self.keys)
        return self._X

    def require_labels(self, what: str) -> np.ndarray:
        unlabelled = sum(label is None for label in self.labels)
        if unlabelled:
            raise HeadstartError(
                f"{what} needs labels, but {unlabelled} images have none; use class folders "
                "(root/CLASS/image.jpg) or a manifest of path,label lines"
            )
        return self.labels.astype(str)

    def subset(self, rows: np.ndarray) -> Embedded:
        paths = [self.paths[i] for i in rows]
        X = self._X[rows] if self._X is not None else None
        return Embedded(
            self.labels[rows], paths, self.keys[rows], self.fingerprint, self.store, _X=X
        )


def train_and_validation(
    data: Embedded,
    val_sources: Sequence[str],
    val_split: float,
    seed: int,
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    *,
    purpose: str,
    progress: bool = False,
) -> tuple[Embedded, Embedded]:
    """(train, validation): ``data`` and the ``val_sources`` embedded alike, or, without
    them, a stratified split of ``data`` (``purpose`` names what needs its labels)."""
    if val_sources:
        return data, embed_sources(val_sources, options, cache_dir, progress=progress)
    labels = data.require_labels(purpose)
    train_rows, val_rows = stratified_split(labels, val_split, seed)
    return data.subset(train_rows), data.subset(val_rows)


def embed_sources(
    sources: Sequence[str],
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> Embedded:
    """Extract what is missing, then read every usable image's vector from the cache."""
    summary = extract(sources, options, cache_dir, progress=progress)
    embedded = read_embedded(
        sources, EmbeddingCache(cache_dir), summary.fingerprint, fields=options.fields
    )
    embedded.summary = summary
    return embedded


def read_embedded(
    sources: Sequence[str],
    cache: EmbeddingCache,
    fingerprint: Fingerprint,
    *,
    fields: SampleFields | None = None,
) -> Embedded:
    """The sources' usable images and their keys, from the stat index (no model involved);
    their vectors come from the shards when ``X`` is first used. ``fields``: as extract read
    the sources (tar samples' labels, tables' columns)."""
    store = cache.open(fingerprint)
    keys, paths, labels, listed = [], [], [], 0
    for chunk in usable_chunks(sources, cache, store, fields=fields):
        keys.append(chunk.keys)
        paths.extend(chunk.paths)
        labels.extend(chunk.labels)
        listed += chunk.listed
    if not paths:
        raise HeadstartError(f"none of the images in {', '.join(sources)} could be embedded")
    return Embedded(
        labels=np.array(labels, dtype=object),
        paths=paths,
        keys=np.concatenate(keys),
        fingerprint=fingerprint,
        store=store,
        missing=listed - len(paths),
    )


@dataclass
class UsableChunk:
    """A chunk of a listing's usable images: what the store holds, in source order."""

    keys: np.ndarray  # S64, only the rows the store holds
    paths: list[str]
    labels: list[str | None]
    listed: int  # images listed in this chunk, usable or not
    locations: np.ndarray  # int64, where the store's view placed each row (FingerprintStore.place)
    captions: list[str | None]


def usable_chunks(
    sources: Sequence[str],
    cache: EmbeddingCache,
    store: FingerprintStore,
    *,
    fields: SampleFields | None = None,
) -> Iterator[UsableChunk]:
    """The sources' images, a chunk at a time, with the content keys the catalog gives them
    (files unchanged since they were read, samples of tar shards read whole) and the store
    holds: what is usable, in source order, placed in the store's current view."""
    listed = ListedCount()
    counted = 0
    pending: list[tuple[list[LabelledRow], int]] = []  # listing chunks not yet looked up
    with cache.catalog() as catalog:
        # Unreadable folders were reported by the extract that just ran; not again here.
        rows_blocks = iter_labelled(
            sources,
            catalog,
            block=_LIST_CHUNK,
            skipped=ListingSkips(),
            listed=listed,
            fields=fields,
        )
        for rows in itertools.chain(rows_blocks, [None]):  # None: the end
            pending.append(([] if rows is None else rows, listed.images - counted))
            counted = listed.images
            if rows is None or sum(len(chunk) for chunk, _ in pending) >= _LOOKUP_ROWS:
                yield from _looked_up(pending, store)
                pending = []


def _looked_up(
    pending: list[tuple[list[LabelledRow], int]], store: FingerprintStore
) -> Iterator[UsableChunk]:
    """Listing chunks as :class:`UsableChunk`, their keys placed in one lookup: the key index
    reads each of its blocks at most once per lookup, so fewer, larger lookups read less."""
    keys = np.asarray([row.key for rows, _ in pending for row in rows], dtype="S64")
    held, locations = store.place(keys)
    start = 0
    for rows, listed in pending:
        stop = start + len(rows)
        mine = held[start:stop]
        usable = [row for row, ok in zip(rows, mine, strict=True) if ok]
        yield UsableChunk(
            keys[start:stop][mine],
            [row.name for row in usable],
            [row.label for row in usable],
            listed,
            locations[start:stop][mine],
            [row.caption for row in usable],
        )
        start = stop


@dataclass
class Planned:
    """A source's usable images as a block source (no path, no vector held), and the count of
    those left out (no embedding) and of those without a label."""

    source: CachedBlocks
    fingerprint: Fingerprint
    missing: int
    unlabelled: int
    summary: ExtractSummary | None = None

    def require_labels(self, what: str) -> CachedBlocks:
        if self.unlabelled:
            raise HeadstartError(
                f"{what} needs labels, but {self.unlabelled} images have none; use class folders "
                "(root/CLASS/image.jpg) or a manifest of path,label lines"
            )
        return self.source


def plan_rows(
    sources: Sequence[str],
    cache: EmbeddingCache,
    fingerprint: Fingerprint,
    *,
    fields: SampleFields | None = None,
) -> Planned:
    """The sources' usable images as :class:`~headstart.classify.blocks.CachedBlocks`: keys
    and their places in the store go to temporary files beside the cache, labels become int32
    codes; memory stays at a few bytes a row whatever the count."""
    store = cache.open(fingerprint)
    placed = PlacedKeys(store, cache.root)
    codes: list[np.ndarray] = []
    names: dict[str | None, int] = {}
    listed = 0
    for chunk in usable_chunks(sources, cache, store, fields=fields):
        placed.append(chunk.keys, chunk.locations)
        codes.append(np.array([names.setdefault(x, len(names)) for x in chunk.labels], np.int32))
        listed += chunk.listed
    if not placed.count:
        raise HeadstartError(f"none of the images in {', '.join(sources)} could be embedded")
    # Codes in sorted-name order: what np.unique gives, so splits and classes_ match arrays'.
    classes = np.array(sorted(name for name in names if name is not None), dtype=str)
    lookup = np.full(len(names) + 1, -1, np.int32)
    for name, code in names.items():
        if name is not None:
            lookup[code] = int(np.searchsorted(classes, name))
    all_codes = lookup[np.concatenate(codes)]
    unlabelled = int(np.count_nonzero(all_codes < 0)) if None in names else 0
    source = CachedBlocks(placed, all_codes, classes)
    return Planned(source, fingerprint, listed - placed.count, unlabelled)


def plan_sources(
    sources: Sequence[str],
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> Planned:
    """Extract what is missing, then plan the usable images as a block source."""
    summary = extract(sources, options, cache_dir, progress=progress)
    planned = plan_rows(
        sources, EmbeddingCache(cache_dir), summary.fingerprint, fields=options.fields
    )
    planned.summary = summary
    return planned


def split_planned(
    data: Planned,
    val_sources: Sequence[str],
    val_split: float,
    seed: int,
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    *,
    purpose: str,
    progress: bool = False,
) -> tuple[Blocks, Blocks]:
    """(train, validation) views: ``data`` and the ``val_sources`` planned alike, or, without
    them, the same stratified split of ``data`` as :func:`train_and_validation` makes."""
    source = data.require_labels(purpose)
    if val_sources:
        val = plan_sources(val_sources, options, cache_dir, progress=progress)
        return source, val.require_labels("validation")
    train_rows, val_rows = stratified_split_codes(source.codes, source.classes, val_split, seed)
    return source.take(train_rows), source.take(val_rows)


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return dict(sorted(Counter(labels.tolist()).items()))


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation), each class split in proportion, reproducibly."""
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    return stratified_split_codes(codes, classes, fraction, seed)


def stratified_split_codes(
    codes: np.ndarray, classes: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stratified_split` of int class codes (indices into the sorted ``classes``): the
    same rows as the labels themselves give, holding 4 bytes a row instead of the names."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise HeadstartError(f"--val-split must be between 0 and 1, got {fraction}")
    counts = np.bincount(codes, minlength=len(classes))
    rare = [str(name) for name, count in zip(classes, counts, strict=True) if 0 < count < 2]
    if rare:
        raise HeadstartError(
            f"classes with fewer than 2 images cannot be split for validation: {', '.join(rare)}"
        )
    present = int(np.count_nonzero(counts))
    rows = np.arange(len(codes))
    n_val = max(round(fraction * len(rows)), present)
    if len(rows) - n_val < present:
        raise HeadstartError(
            f"{len(rows)} images are too few to hold out a validation image of every class"
        )
    train, val = train_test_split(rows, test_size=n_val, stratify=codes, random_state=seed)
    return np.sort(train), np.sort(val)
