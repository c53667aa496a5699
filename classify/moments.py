"""One pass over a block source: the sums the streaming heads are built from.

Everything accumulates in float64 (on the device, block by block), so a sum over a hundred
million float32 rows loses nothing a float32 solver would notice. From one pass come the
standardiser (per-feature mean and scale), the ridge normal equations (the Gram matrix and the
class sums) and the nearest-class-mean centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headstart.classify.blocks import Blocks

__all__ = ["Moments", "class_sums", "gather_moments"]


@dataclass
class Moments:
    """Row count, per-feature sums and sums of squares, and optionally the Gram matrix
    ``X^T X`` and per-class sums and counts, all float64."""

    n: int
    sum: np.ndarray
    sum_squares: np.ndarray
    gram: np.ndarray | None = None
    class_sums: np.ndarray | None = None  # (n_classes, d)
    class_counts: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.n

    @property
    def scale(self) -> np.ndarray:
        """Population standard deviation; 1 for constant features (as StandardScaler)."""
        variance = np.maximum(self.sum_squares / self.n - self.mean**2, 0)
        scale = np.sqrt(variance)
        scale[scale < 1e-6] = 1.0
        return scale


def gather_moments(
    source: Blocks,
    device: torch.device,
    *,
    gram: bool = False,
    n_classes: int | None = None,
) -> Moments:
    """One pass over ``source``: sums and sums of squares, and the Gram matrix (``gram``) and
    class sums (``n_classes``) when asked."""
    d = source.dim
    f64 = {"dtype": torch.float64, "device": device}
    total, squares = torch.zeros(d, **f64), torch.zeros(d, **f64)
    product = torch.zeros(d, d, **f64) if gram else None
    sums = torch.zeros(n_classes, d, **f64) if n_classes else None
    counts = torch.zeros(n_classes, **f64) if n_classes else None
    n = 0
    for X, y in source.blocks():
        block = torch.from_numpy(X).to(device)
        n += len(block)
        # Accumulated in float64 without a float64 copy of the block (float32 squares lose
        # nothing a float32 standardiser keeps).
        total += block.sum(dim=0, dtype=torch.float64)
        squares += block.square().sum(dim=0, dtype=torch.float64)
        if product is None and sums is None:
            continue
        wide = block.double()  # the Gram matrix needs float64 products
        if product is not None:
            product.addmm_(wide.T, wide)
        if sums is not None:
            codes = torch.from_numpy(y).to(device)
            sums.index_add_(0, codes, wide)
            counts.index_add_(0, codes, torch.ones(len(codes), **f64))
    return Moments(
        n,
        total.cpu().numpy(),
        squares.cpu().numpy(),
        None if product is None else product.cpu().numpy(),
        None if sums is None else sums.cpu().numpy(),
        None if counts is None else counts.cpu().numpy(),
    )


def class_sums(source: Blocks, n_classes: int, device: torch.device) -> np.ndarray:
    """Per-class sums of the L2-normalised rows (float64, (n_classes, d)): one pass."""
    sums = torch.zeros(n_classes, source.dim, dtype=torch.float64, device=device)
    for X, y in source.blocks():
        block = torch.from_numpy(X).to(device).double()
        block /= block.norm(dim=1, keepdim=True).clamp_(min=1e-12)
        sums.index_add_(0, torch.from_numpy(y).to(device), block)
    return sums.cpu().numpy()
