"""The job behind ``headstart knn``: neighbours of query images (embedded as the index was) and
of cached content keys, ranked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headstart.cache.keys import KEY_DTYPE
from headstart.cache.store import EmbeddingCache
from headstart.classify.data import embed_sources
from headstart.errors import HeadstartError
from headstart.extract import options_for_fingerprint
from headstart.search.loaded import LoadedIndex
from headstart.search.settings import NEIGHBORS
from headstart.search.store import load_index

__all__ = ["Neighbor", "query_index", "ranked_neighbors"]


@dataclass
class Neighbor:
    query: str
    rank: int
    similarity: float
    path: str
    label: str | None
    caption: str | None = None


def query_index(
    index_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    sources: Sequence[str] = (),
    keys: Sequence[str] = (),
    k: int = NEIGHBORS,
    runtime: dict | None = None,
    progress: bool = False,
) -> tuple[LoadedIndex, list[Neighbor]]:
    """Neighbors of query images (embedded like the index) and of cached content keys."""
    loaded = load_index(index_dir)
    names: list[str] = []
    blocks = []
    if sources:
        options = options_for_fingerprint(loaded.fingerprint, **(runtime or {}))
        data = embed_sources(sources, options, cache_dir, progress=progress)
        names.extend(data.paths)
        blocks.append(data.X)
    if keys:
        store = EmbeddingCache(cache_dir).open(loaded.fingerprint)
        blocks.append(store.get(np.asarray(keys, dtype=KEY_DTYPE)))
        names.extend(f"key:{key}" for key in keys)
    if not blocks:
        raise HeadstartError("give query images or --key values")
    similarities, rows = loaded.search(np.concatenate(blocks), k)
    return loaded, ranked_neighbors(loaded, names, similarities, rows)


def ranked_neighbors(
    loaded: LoadedIndex, names: Sequence[str], similarities: np.ndarray, rows: np.ndarray
) -> list[Neighbor]:
    """One :class:`Neighbor` per hit of each named query, best first (FAISS's -1 padding,
    where the index holds fewer than k items, left out)."""
    hits = [
        (name, rank + 1, float(sim), int(row))
        for name, sims, found in zip(names, similarities, rows, strict=True)
        for rank, (sim, row) in enumerate(zip(sims, found, strict=True))
        if row >= 0
    ]
    items = loaded.items.take([row for *_, row in hits])
    return [
        Neighbor(name, rank, sim, item.path, item.label, item.caption)
        for (name, rank, sim, _), item in zip(hits, items, strict=True)
    ]
