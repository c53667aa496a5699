"""Synthetic vectors shaped like real embeddings, for the benchmarks.

Embeddings have a low intrinsic dimension: overlapping Gaussian clusters in a 48-dimensional
latent space, mapped linearly into ``d`` dimensions, plus a little noise, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from headstart.classify.neighbors import l2_normalize


def embedding_blocks(
    n: int, d: int, seed: int, block: int = 100_000, latent: int = 48, clusters: int = 500
) -> Iterator[np.ndarray]:
    """``n`` such vectors, ``block`` rows at a time (so a million never sit in memory)."""
    base = np.random.default_rng(0)  # the same clusters and map for every seed
    centres = base.normal(size=(clusters, latent)).astype(np.float32)
    lift = base.normal(size=(latent, d)).astype(np.float32) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        size = min(block, n - start)
        z = centres[rng.integers(0, clusters, size)]
        z = z + rng.normal(size=(size, latent)).astype(np.float32)
        noise = rng.normal(size=(size, d)).astype(np.float32) * 0.1
        yield l2_normalize(z @ lift + noise)


def embedding_like(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` such vectors in one array."""
    return np.concatenate(list(embedding_blocks(n, d, seed)))
