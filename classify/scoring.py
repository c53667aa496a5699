"""Heads answering over a block source: every head's probabilities from one pass.

A sweep scores many heads on the same validation rows; reading each block once for all of
them keeps the passes over the data to one, whatever the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headstart.classify.blocks import Blocks
from headstart.classify.heads import Head
from headstart.classify.metrics import Metrics, score

__all__ = ["predict_blocks", "score_blocks"]


def predict_blocks(heads: Sequence[Head], source: Blocks) -> list[np.ndarray]:
    """Each head's ``predict_proba`` of every row of ``source`` (float32, (n, n_classes))."""
    out = [np.empty((len(source), len(head.classes_)), np.float32) for head in heads]
    start = 0
    for X, _ in source.blocks():
        for head, proba in zip(heads, out, strict=True):
            proba[start : start + len(X)] = head.predict_proba(X)
        start += len(X)
    return out


def score_blocks(heads: Sequence[Head], source: Blocks) -> list[Metrics]:
    """Each head's validation metrics on ``source``, from one pass."""
    truth = source.labels()
    return [
        score(truth, proba, head.classes_, probabilistic=head.probabilistic)
        for head, proba in zip(heads, predict_blocks(heads, source), strict=True)
    ]
