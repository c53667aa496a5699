"""Labelled embeddings from image sources, through the cache, and the validation split.

The sources are extracted first (a no-op for what the cache holds), then read back: every
image's content key comes from the stat index, its vector from the fingerprint's shards.
Files that could not be embedded are left out and counted.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.cache.store import EmbeddingCache, FingerprintStore
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, ExtractSummary, extract, iter_images
from headstart.extract.sources import ListingSkips

__all__ = [
    "Embedded",
    "class_counts",
    "embed_sources",
    "read_embedded",
    "stratified_split",
    "train_and_validation",
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
    embedded = read_embedded(sources, EmbeddingCache(cache_dir), summary.fingerprint)
    embedded.summary = summary
    return embedded


def read_embedded(
    sources: Sequence[str], cache: EmbeddingCache, fingerprint: Fingerprint
) -> Embedded:
    """The sources' usable images and their keys, from the stat index (no model involved);
    their vectors come from the shards when ``X`` is first used."""
    store = cache.open(fingerprint)
    # Unreadable folders were reported by the extract that just ran; not again here.
    items = list(iter_images(sources, ListingSkips()))
    with cache.catalog() as catalog:
        known = catalog.lookup([item.path for item in items])
    keys, paths, labels = [], [], []
    for item in items:
        entry = known.get(item.path)
        if entry is None:
            continue
        try:
            st = os.stat(item.path)
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):
            keys.append(entry.key)
            paths.append(item.path)
            labels.append(item.label)
    keys_array = np.asarray(keys, dtype="S64")
    rows = np.flatnonzero(store.contains(keys_array))
    if not len(rows):
        raise HeadstartError(f"none of the images in {', '.join(sources)} could be embedded")
    return Embedded(
        labels=np.array([labels[i] for i in rows], dtype=object),
        paths=[paths[i] for i in rows],
        keys=keys_array[rows],
        fingerprint=fingerprint,
        store=store,
        missing=len(items) - len(rows),
    )


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return dict(sorted(Counter(labels.tolist()).items()))


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation), each class split in proportion, reproducibly."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise HeadstartError(f"--val-split must be between 0 and 1, got {fraction}")
    rare = [name for name, count in class_counts(labels).items() if count < 2]
    if rare:
        raise HeadstartError(
            f"classes with fewer than 2 images cannot be split for validation: {', '.join(rare)}"
        )
    rows = np.arange(len(labels))
    n_val = max(round(fraction * len(rows)), len(class_counts(labels)))
    if len(rows) - n_val < len(class_counts(labels)):
        raise HeadstartError(
            f"{len(rows)} images are too few to hold out a validation image of every class"
        )
    train, val = train_test_split(rows, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)
