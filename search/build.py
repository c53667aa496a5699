"""Building an index: train IVF quantizers on a sample, add the vectors a block at a time, tune.

An IVF-PQ index built this way can cover more vectors than memory holds as float32.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from headstart.search.budget import BuildPlan
from headstart.search.settings import TARGET_RECALL
from headstart.search.spec import COMPRESSED_KINDS, IVF_KINDS, IndexSpec
from headstart.search.tune import tune
from headstart.search.vectors import Vectors

__all__ = ["build_index", "empty_index"]

log = logging.getLogger(__name__)


def build_index(
    vectors: np.ndarray | Vectors,
    spec: IndexSpec,
    *,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
    plan: BuildPlan | None = None,
    trained: Any = None,
) -> tuple[Any, IndexSpec, float]:
    """Build, fill and tune an index; returns (index, tuned spec, recall@10).

    Vectors are added a block at a time, IVF is trained on a sample, and exact neighbors for
    tuning are merged block by block. A ``plan`` (:func:`~headstart.search.budget.plan_build`)
    sets the block and sample sizes that keep the build within a memory budget. ``trained``,
    an empty IVF index of ``spec`` already trained (another part's: see
    :mod:`headstart.search.merge`), is filled instead of training a new one.
    """
    if isinstance(vectors, np.ndarray):
        vectors = Vectors(vectors)
    if plan is not None:
        vectors.block_rows = plan.block_rows
    index = trained if trained is not None else empty_index(spec, vectors.dim)
    if trained is None and spec.kind in IVF_KINDS:
        _train_quantizers(index, vectors, spec, seed, plan.train_rows if plan else None)
    for _, block in vectors.blocks():
        index.add(block)
    spec, recall = tune(index, vectors, spec, target_recall, seed)
    if recall < target_recall and spec.kind in COMPRESSED_KINDS:
        log.warning(
            "recall@10 %.3f stays below the %g target: the compressed vectors cannot reach "
            "it; a larger --max-memory or --kind ivf would",
            recall,
            target_recall,
        )
    return index, spec, recall


def empty_index(spec: IndexSpec, d: int):
    """The FAISS index ``spec`` describes, over inner products, before training and adding."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexFlatIP(d)
    if spec.kind == "hnsw":
        return faiss.IndexHNSWFlat(d, spec.hnsw_m, ip)
    quantizer = faiss.IndexFlatIP(d)  # FAISS's Python wrapper keeps it alive with the index
    if spec.kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, d, spec.nlist, ip)
    if spec.kind == "ivfsq":
        qt_8bit = faiss.ScalarQuantizer.QT_8bit
        return faiss.IndexIVFScalarQuantizer(quantizer, d, spec.nlist, qt_8bit, ip)
    return faiss.IndexIVFPQ(quantizer, d, spec.nlist, spec.pq_m, spec.pq_nbits, ip)


def _train_quantizers(
    index, vectors: Vectors, spec: IndexSpec, seed: int, most: int | None
) -> None:
    """Train an IVF index's coarse (and product) quantizer on a sample of the vectors (of at
    most ``most``, when a budget caps it)."""
    # FAISS wants >= 39 training vectors per centroid: per IVF list, and per PQ code.
    wanted = 39 * max(spec.nlist, 2**spec.pq_nbits if spec.kind == "ivfpq" else 0)
    size = min(vectors.count, wanted, most if most is not None else wanted)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(vectors.count, size=size, replace=False))
    if len(sample) < wanted:
        # Said once here, if at all, rather than by FAISS once per quantizer it trains.
        index.cp.min_points_per_centroid = 1
        if spec.kind == "ivfpq":
            index.pq.cp.min_points_per_centroid = 1
            log.warning(
                "product quantisation trained on %d vectors (FAISS advises %d): expect low "
                "recall; --kind ivf or flat suits a collection this small",
                len(sample),
                wanted,
            )
    index.cp.seed = seed
    index.train(vectors.take(sample))
