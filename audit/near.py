"""Near-duplicates across sources: pairs of different files whose embeddings have a cosine
similarity over a threshold (resized, re-encoded and cropped copies), found through FAISS.

For each pair of sources the smaller one is indexed and the other searched against it, both a
block of vectors at a time from the store. Up to :data:`FLAT_MAX_ROWS` indexed vectors the
search is exact (``IndexFlatIP``); above, an inverted file (``IndexIVFFlat``) visits only the
nearest lists, which is where near-copies are, at a fraction of the cost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headstart.audit.findings import NearPair
from headstart.audit.sources import AuditSource, iter_vector_blocks
from headstart.search.exact import l2_normalize

__all__ = ["FLAT_MAX_ROWS", "NearSearch", "near_duplicates"]

log = logging.getLogger(__name__)

# Above this many indexed vectors an inverted file replaces the exact search (see
# bench/audit_speed.py for the measured crossing).
FLAT_MAX_ROWS = 20_000
_TRAIN_ROWS_PER_LIST = 40  # FAISS warns below 39 training points per centroid
_NPROBE = 16  # near-copies sit in their original's list or one beside it


@dataclass(frozen=True)
class NearSearch:
    """How near-duplicates are searched: the cosine threshold, how many neighbours each
    image looks at, and the device (None: the GPUs FAISS sees, if any)."""

    threshold: float
    neighbours: int = 8
    gpu: bool | None = None


def near_duplicates(sources: Sequence[AuditSource], search: NearSearch) -> list[NearPair]:
    """Every cross-source pair over ``search.threshold`` whose bytes differ (exact copies are
    reported as exact duplicates), most similar first."""
    found: list[NearPair] = []
    for i in range(len(sources)):
        for j in range(i + 1, len(sources)):
            indexed, queried = sorted((sources[i], sources[j]), key=len)
            found.extend(_pairs(indexed, queried, search))
    found.sort(key=lambda p: (-p.similarity, p.first.source, p.first.path, p.second.path))
    return found


def _pairs(indexed: AuditSource, queried: AuditSource, search: NearSearch) -> list[NearPair]:
    index = _build_index(indexed, search.gpu)
    k = min(search.neighbours, len(indexed))
    pairs = []
    for rows, vectors in iter_vector_blocks(queried.data):
        similarities, neighbours = index.search(l2_normalize(vectors), k)
        hit_rows, hit_cols = np.nonzero(similarities >= search.threshold)
        for q, c in zip(hit_rows.tolist(), hit_cols.tolist(), strict=True):
            other = int(neighbours[q, c])
            if other < 0:  # IVF found fewer than k neighbours
                continue
            row = int(rows[q])
            if queried.data.keys[row] == indexed.data.keys[other]:
                continue  # the same bytes: an exact duplicate, reported as such
            pairs.append(
                NearPair(
                    min(float(similarities[q, c]), 1.0), indexed.item(other), queried.item(row)
                )
            )
    log.info("%s vs %s: %d near-duplicate pairs", indexed.name, queried.name, len(pairs))
    return pairs


def _build_index(source: AuditSource, gpu: bool | None):
    import faiss

    n, d = len(source), source.data.store.dim
    if gpu is None:
        gpu = faiss.get_num_gpus() > 0
    if n <= FLAT_MAX_ROWS:
        index = faiss.IndexFlatIP(d)
    else:
        lists = int(4 * math.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        # FAISS's Python wrapper keeps the quantizer alive with the index.
        index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(
            n, min(n, lists * _TRAIN_ROWS_PER_LIST), replace=False
        )
        index.train(l2_normalize(source.data.store.get(source.data.keys[np.sort(sample)])))
        index.nprobe = min(_NPROBE, lists)
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    for _, vectors in iter_vector_blocks(source.data):
        index.add(l2_normalize(vectors))
    return index
