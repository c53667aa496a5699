"""The jobs behind ``headstart index build`` and ``index add``: embed the sources through the
cache (only what is missing), then build an index over their vectors streamed from the shards,
or add the new ones to an index."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from headstart.atomic import TEMPORARY_PREFIX
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.store import EmbeddingCache, FingerprintStore
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, ExtractSummary, extract, options_for_fingerprint
from headstart.search.budget import (
    check_least_budget,
    default_budget,
    left_for_build,
    plan_build,
)
from headstart.search.build import build_index
from headstart.search.embeddings_file import embeddings_fingerprint, open_embeddings
from headstart.search.grow import add_to_index
from headstart.search.items import write_items
from headstart.search.layout import Layout
from headstart.search.listing import ItemListing, NewItems, item_paths
from headstart.search.merge import emptied
from headstart.search.settings import TARGET_RECALL
from headstart.search.spec import IndexSpec, choose_spec
from headstart.search.store import load_index, save_index
from headstart.search.thumbnails import ThumbnailSummary, write_thumbnails
from headstart.search.vectors import Vectors

__all__ = [
    "BuiltIndex",
    "Grown",
    "add_sources_to_index",
    "build_index_from_embeddings",
    "build_index_from_sources",
]


@dataclass
class BuiltIndex:
    directory: Path
    spec: IndexSpec
    recall: float
    count: int
    seconds: float
    missing: int
    thumbnails: ThumbnailSummary | None = None


def build_index_from_sources(
    sources: Sequence[str],
    embed: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str = "auto",
    max_memory: int | None = None,
    target_recall: float = TARGET_RECALL,
    thumbnails: bool = True,
    trained_from: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> BuiltIndex:
    """Embed ``sources`` (what the cache lacks) and index them into ``out``, within
    ``max_memory`` bytes (default: half the memory available). A budget that cannot hold
    the build is refused before it starts: before embedding when it cannot hold even the
    smallest build, and before indexing when it cannot hold this one. ``trained_from``: an
    IVF index whose trained quantizer this one shares, so that the two merge
    (``index merge``).

    Nothing grows with the collection but the index's own codes: the images' keys wait in a
    temporary file and their paths and labels go straight to the item table, a listing chunk
    at a time; the vectors stream from the shards.
    """
    budget = max_memory if max_memory is not None else default_budget()
    check_least_budget(budget)
    summary, cache, store = _extracted(sources, embed, cache_dir, progress)
    started = time.perf_counter()
    made = not Path(out).exists()  # removed again if the build stops before it is saved
    Path(out).mkdir(parents=True, exist_ok=True)
    # The item table is written first, under a private name; save_index moves it into place.
    items_path = Path(out) / f"{TEMPORARY_PREFIX}{os.getpid()}-{Layout().items}"
    try:
        listing = ItemListing(sources, cache, store, embed.fields)
        write_items(items_path, listing.rows())
        if not listing.keys.count:
            raise HeadstartError(f"none of the images in {', '.join(sources)} could be embedded")
        vectors = Vectors(store, listing.keys)
        budget = left_for_build(budget)  # the budget bounds the whole process
        spec, trained = choose_spec(vectors.count, vectors.dim, kind, budget), None
        if trained_from is not None:
            spec, trained = _trained(trained_from, summary.fingerprint)
        plan = plan_build(spec, vectors.count, vectors.dim, budget)
        index, spec, recall = build_index(
            vectors, spec, target_recall=target_recall, plan=plan, trained=trained
        )
        # Written before index.json, which marks the directory complete.
        thumbnail_summary = write_thumbnails(out, item_paths(items_path)) if thumbnails else None
        save_index(
            out,
            index,
            spec,
            recall,
            fingerprint=summary.fingerprint,
            items=items_path,
            thumbnails=thumbnail_summary,
        )
    except BaseException:
        items_path.unlink(missing_ok=True)
        if made and not any(Path(out).iterdir()):
            Path(out).rmdir()
        raise
    elapsed = time.perf_counter() - started
    return BuiltIndex(
        Path(out),
        spec,
        recall,
        vectors.count,
        elapsed,
        listing.listed - vectors.count,
        thumbnail_summary,
    )


@dataclass
class Grown:
    """What ``index add`` did: vectors added, images already indexed, the index's size."""

    added: int
    known: int
    count: int
    missing: int


def add_sources_to_index(
    index_dir: str | os.PathLike[str],
    sources: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    runtime: dict | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Grown:
    """Embed ``sources`` as the index's were (only what the cache lacks) and add the images it
    does not hold yet (by content key) to the index in ``index_dir``."""
    loaded = load_index(index_dir)  # mapped: only its fingerprint and items are needed here
    options = options_for_fingerprint(loaded.fingerprint, **(runtime or {}))
    _, cache, store = _extracted(sources, options, cache_dir, progress)
    with NewItems(index_dir) as new:
        new.collect(sources, cache, store, loaded.items, options.fields)
        loaded.items.close()
        added = add_to_index(
            index_dir,
            Vectors(store, new.keys),
            new.rows(),
            max_memory=max_memory if max_memory is not None else default_budget(),
        )
    return Grown(added.added, new.usable - added.added, added.count, new.listed - new.usable)


def build_index_from_embeddings(
    file: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    vector_column: str = "embedding",
    kind: str = "auto",
    max_memory: int | None = None,
    target_recall: float = TARGET_RECALL,
    trained_from: str | os.PathLike[str] | None = None,
) -> BuiltIndex:
    """Index the vectors of a ``.npy`` or Parquet file (as autofaiss does), read in blocks.

    Item ``i`` is named ``FILE#i``: the file says nothing of images, so the index keeps no
    labels, content keys or thumbnails. With ``trained_from`` (a part built before, from
    another file of the same model's embeddings), the index shares its quantizer and its
    fingerprint, so the two merge.
    """
    budget = max_memory if max_memory is not None else default_budget()
    started = time.perf_counter()
    vectors = open_embeddings(file, vector_column)
    fingerprint = embeddings_fingerprint(file, vectors.dim)
    budget = left_for_build(budget)  # the budget bounds the whole process
    spec, trained = choose_spec(vectors.count, vectors.dim, kind, budget), None
    if trained_from is not None:
        spec, trained = _trained(trained_from, None)
        fingerprint = load_index(trained_from).fingerprint
    plan = plan_build(spec, vectors.count, vectors.dim, budget)  # refused here, before work
    index, spec, recall = build_index(
        vectors, spec, target_recall=target_recall, plan=plan, trained=trained
    )
    name = Path(file).name
    save_index(
        out,
        index,
        spec,
        recall,
        fingerprint=fingerprint,
        paths=(f"{name}#{row}" for row in range(vectors.count)),
        labels=(None for _ in range(vectors.count)),
        keys=("" for _ in range(vectors.count)),
    )
    elapsed = time.perf_counter() - started
    return BuiltIndex(Path(out), spec, recall, vectors.count, elapsed, 0, None)


def _extracted(
    sources: Sequence[str],
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    progress: bool,
) -> tuple[ExtractSummary, EmbeddingCache, FingerprintStore]:
    """Embed what the cache lacks of ``sources``; the run's summary, the cache and its store."""
    summary = extract(sources, options, cache_dir, progress=progress)
    cache = EmbeddingCache(cache_dir)
    return summary, cache, cache.open(summary.fingerprint)


def _trained(directory: str | os.PathLike[str], fingerprint: Fingerprint | None):
    """(spec, empty trained index) of the IVF index in ``directory``, refused when it holds
    other embeddings than ``fingerprint`` (when given)."""
    loaded = load_index(directory)
    if fingerprint is not None and loaded.fingerprint.id != fingerprint.id:
        raise HeadstartError(
            f"--trained-from {directory} holds embeddings {loaded.fingerprint.id}, these are "
            f"{fingerprint.id}: train and build with one model"
        )
    return loaded.spec, emptied(loaded)
