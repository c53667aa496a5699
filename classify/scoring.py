"""Heads answering over a block source: every head's metrics from one pass.

A sweep scores many heads on the same validation rows; reading each block once for all of
them keeps the passes over the data to one, whatever the grid. Nothing of size rows x classes
is kept: per head and row, a tally holds the predicted class and the probability given to the
true one (8 bytes), from which the metrics follow exactly as :func:`metrics.score` computes
them from whole arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk

from headstart.classify.blocks import Blocks
from headstart.classify.heads import Head
from headstart.classify.metrics import Metrics
from headstart.errors import HeadstartError

__all__ = ["Tally", "predict_blocks", "score_blocks"]

_CLIP = 1e-7  # as metrics.score clips probabilities for the log-loss


class Tally:
    """A head's answers on validation rows, a block at a time, for its metrics.

    ``val_classes`` name the validation codes; labels the head does not know count as errors
    (and leave the log-loss out), as in :func:`~headstart.classify.metrics.score`.
    """

    def __init__(self, head_classes: np.ndarray, val_classes: np.ndarray, n: int,
                 *, probabilistic: bool) -> None:  # fmt: skip
        names = np.asarray(head_classes).astype(str)
        position = {name: i for i, name in enumerate(names)}
        # A validation label the head lacks gets a code of its own, past the head's classes.
        self.lookup = np.array(
            [position.get(str(c), len(names) + j) for j, c in enumerate(val_classes)], np.int64
        )
        self.n_classes = len(names)
        self.truth = np.empty(n, np.int64)
        self.predicted = np.empty(n, np.int64)
        self.picked = np.empty(n, np.float32) if probabilistic else None
        self.count = 0

    def add(self, proba: np.ndarray, codes: np.ndarray) -> None:
        """One block: the head's probabilities and the rows' validation class codes."""
        rows = slice(self.count, self.count + len(codes))
        truth = self.lookup[codes]
        self.truth[rows] = truth
        self.predicted[rows] = proba.argmax(axis=1)
        if self.picked is not None:
            clipped = np.clip(proba, _CLIP, 1)
            known = truth < self.n_classes
            chosen = clipped[np.arange(len(truth)), np.where(known, truth, 0)]
            self.picked[rows] = np.where(known, chosen / clipped.sum(axis=1), np.nan)
        self.count += len(codes)

    def metrics(self) -> Metrics:
        truth, predicted = self.truth[: self.count], self.predicted[: self.count]
        log_loss = None
        if self.picked is not None and (truth < self.n_classes).all():
            log_loss = float(-np.log(self.picked[: self.count].astype(np.float64)).mean())
        return Metrics(
            n=int(self.count),
            accuracy=float(np.mean(truth == predicted)),
            balanced_accuracy=float(sk.balanced_accuracy_score(truth, predicted)),
            macro_f1=float(sk.f1_score(truth, predicted, average="macro", zero_division=0)),
            log_loss=log_loss,
        )


def predict_blocks(heads: Sequence[Head], source: Blocks) -> list[np.ndarray]:
    """Each head's ``predict_proba`` of every row of ``source`` (float32, (n, n_classes)):
    for a few rows (a plot's), not a whole validation set; :func:`score_blocks` keeps less."""
    out = [np.empty((len(source), len(head.classes_)), np.float32) for head in heads]
    start = 0
    for X, _ in source.blocks():
        for head, proba in zip(heads, out, strict=True):
            proba[start : start + len(X)] = head.predict_proba(X)
        start += len(X)
    return out


def score_blocks(heads: Sequence[Head], source: Blocks) -> list[Metrics]:
    """Each head's validation metrics on ``source``, from one pass."""
    tallies = [
        Tally(head.classes_, source.classes, len(source), probabilistic=head.probabilistic)
        for head in heads
    ]
    for X, codes in source.blocks():
        if (codes < 0).any():
            raise HeadstartError(f"{int((codes < 0).sum())} validation rows have no label")
        for head, tally in zip(heads, tallies, strict=True):
            tally.add(head.predict_proba(X), codes)
    return [tally.metrics() for tally in tallies]
