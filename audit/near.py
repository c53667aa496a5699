"""Near-duplicates across sources (and, when asked, within each): pairs of different files whose
embeddings have a cosine similarity over a threshold (resized, re-encoded and cropped copies),
found through FAISS.

Similarity is the cosine of centred embeddings (the mean vector of the sources subtracted):
pooled features after a ReLU all point into one orthant, where even unrelated photos have a
cosine near 1; centred, they spread out and only real copies stay close.

Of each pair of sources the smaller is indexed and the larger searched against it, a block of
vectors at a time from the store. Up to ``NearSearch.flat_max_rows`` indexed vectors the
search is exact (``IndexFlatIP``); above, an inverted file (``IndexIVFFlat``) visits only the
nearest lists, which is where near-copies are, at a fraction of the cost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from headstart.audit.findings import NearPair
from headstart.audit.settings import NearSearch
from headstart.audit.sources import AuditSource, iter_vector_blocks
from headstart.search.exact import l2_normalize

__all__ = ["near_duplicates"]

log = logging.getLogger(__name__)

_TRAIN_ROWS_PER_LIST = 40  # FAISS warns below 39 training points per centroid
_NPROBE = 16  # near-copies sit in their original's list or one beside it
_MEAN_SAMPLE_ROWS = 20_000


def near_duplicates(sources: Sequence[AuditSource], search: NearSearch) -> list[NearPair]:
    """Every cross-source pair over ``search.threshold`` whose bytes differ (exact copies are
    reported as exact duplicates), most similar first; with ``search.within``, pairs within
    each source too.

    Every source but the largest is indexed once (with ``within``, the largest too); then each
    source, largest first, is read once and searched against the indexes of the sources
    smaller than it (and its own). For train, val and test that reads train once rather than
    once per other source, and holds the indexes of val and test.
    """
    found: list[NearPair] = []
    mean = _mean_vector(sources) if search.centre else None
    order = sorted(sources, key=len, reverse=True)
    indexes = [
        _build_index(source, search, mean) if position or search.within else None
        for position, source in enumerate(order)
    ]
    for position, queried in enumerate(order):
        targets = [(order[j], indexes[j]) for j in range(position + 1, len(order))]
        if search.within:
            targets.append((queried, indexes[position]))
        if not targets:
            continue
        for rows, vectors in iter_vector_blocks(queried.data):
            unit = _unit(vectors, mean)
            for indexed, index in targets:
                found.extend(_hits(indexed, index, queried, rows, unit, search))
    if search.within:
        found = _distinct(found)
    found.sort(key=lambda p: (-p.similarity, p.first.source, p.first.path, p.second.path))
    log.info("%d near-duplicate pairs over %g", len(found), search.threshold)
    return found


def _distinct(pairs: list[NearPair]) -> list[NearPair]:
    """Pairs within a source are found from both ends: keep each once, the first of its two
    images by path first."""
    kept: dict[tuple, NearPair] = {}
    for pair in pairs:
        if pair.first.source == pair.second.source and pair.first.path > pair.second.path:
            pair = NearPair(pair.similarity, pair.second, pair.first)
        ends = (pair.first.source, pair.first.path, pair.second.source, pair.second.path)
        if ends not in kept or kept[ends].similarity < pair.similarity:
            kept[ends] = pair
    return list(kept.values())


def _mean_vector(sources: Sequence[AuditSource]) -> np.ndarray:
    """The mean embedding, from an even sample of every source (a mean needs no more)."""
    rng = np.random.default_rng(0)
    total, count = None, 0
    for source in sources:
        take = min(len(source), _MEAN_SAMPLE_ROWS // len(sources))
        rows = np.sort(rng.choice(len(source), take, replace=False))
        for _, vectors in iter_vector_blocks(source.data, rows):
            block = vectors.sum(axis=0, dtype=np.float64)
            total = block if total is None else total + block
            count += len(vectors)
    return (total / count).astype(np.float32)


def _unit(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    return l2_normalize(vectors if mean is None else vectors - mean)


def _hits(
    indexed: AuditSource,
    index,
    queried: AuditSource,
    rows: np.ndarray,
    unit: np.ndarray,
    search: NearSearch,
) -> list[NearPair]:
    """The pairs over the threshold between a block of ``queried`` (its ``rows``, their unit
    vectors) and ``indexed``."""
    itself = indexed is queried  # each image finds itself first: one more neighbour
    k = min(search.neighbours + itself, len(indexed))
    similarities, neighbours = index.search(unit, k)
    pairs = []
    hit_rows, hit_cols = np.nonzero(similarities >= search.threshold)
    for q, c in zip(hit_rows.tolist(), hit_cols.tolist(), strict=True):
        other = int(neighbours[q, c])
        if other < 0:  # IVF found fewer than k neighbours
            continue
        row = int(rows[q])
        if itself and other == row:
            continue
        if queried.data.keys[row] == indexed.data.keys[other]:
            continue  # the same bytes: an exact duplicate, reported as such
        similarity = min(float(similarities[q, c]), 1.0)
        pairs.append(NearPair(similarity, indexed.item(other), queried.item(row)))
    return pairs


def _build_index(source: AuditSource, search: NearSearch, mean: np.ndarray | None):
    import faiss

    n, d = len(source), source.data.store.dim
    gpu = faiss.get_num_gpus() > 0 if search.gpu is None else search.gpu
    if n <= search.flat_max_rows:
        index = faiss.IndexFlatIP(d)
    else:
        lists = max(1, min(int(4 * math.sqrt(n)), n // _TRAIN_ROWS_PER_LIST))
        quantizer = faiss.IndexFlatIP(d)
        # FAISS's Python wrapper keeps the quantizer alive with the index.
        index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(
            n, min(n, lists * _TRAIN_ROWS_PER_LIST), replace=False
        )
        index.train(_unit(source.data.store.get(source.data.keys[np.sort(sample)]), mean))
        index.nprobe = min(_NPROBE, lists)
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    for _, vectors in iter_vector_blocks(source.data):
        index.add(_unit(vectors, mean))
    return index
