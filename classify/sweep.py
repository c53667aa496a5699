"""Hyper-parameter sweeps on a validation split, and the leaderboard they produce.

Linear heads follow the CLIP linear-probe protocol: a log grid of the regularisation strength,
the best value chosen on validation, then a refit on train + validation. ``logreg`` walks its
grid as a warm-started path (:func:`~headstart.classify.linear.logistic_path`); kNN searches
once with the largest k and scores every k from those neighbors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from headstart.classify.heads import Head, get_head
from headstart.classify.linear import LogisticRegressionHead, logistic_path, refit_logistic
from headstart.classify.metrics import Metrics, score
from headstart.classify.neighbors import KNNHead, knn_votes
from headstart.device import AUTO

__all__ = ["LeaderboardRow", "fit_and_score", "refit", "sweep"]


@dataclass
class LeaderboardRow:
    """One head and hyper-parameter value, scored on the validation split."""

    head_name: str
    param: str | None
    value: object
    metrics: Metrics
    fit_seconds: float
    estimator: Head = field(repr=False)
    note: str = ""
    preconditioner: object = field(default=None, repr=False)


def sweep(
    heads: Sequence[str],
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    base_params: dict[str, dict] | None = None,
) -> list[LeaderboardRow]:
    """Score every grid value of every head on the validation split."""
    rows: list[LeaderboardRow] = []
    for name in heads:
        params = (base_params or {}).get(name, {})
        if name == "logreg":
            rows.extend(_logreg_rows(X, y, X_val, y_val, params))
        elif name == "knn":
            rows.extend(_knn_rows(X, y, X_val, y_val, params))
        else:
            grid = get_head(name).grid
            values = grid[1] if grid else (None,)
            for value in values:
                extra = {grid[0]: value} if grid else {}
                estimator = get_head(name)(**(params | extra))
                rows.append(
                    fit_and_score(
                        name, grid[0] if grid else None, value, estimator, X, y, X_val, y_val
                    )
                )
    return rows


def refit(row: LeaderboardRow, X: np.ndarray, y: np.ndarray) -> Head:
    """The chosen head fitted again on all labelled data (train + validation); a head built
    without images (zeroshot) is kept as it is."""
    if not row.estimator.learns_from_images:
        return row.estimator
    if isinstance(row.estimator, LogisticRegressionHead):
        return refit_logistic(row.estimator, X, y, row.preconditioner)
    return clone(row.estimator).fit(X, y)


def fit_and_score(
    name: str, param: str | None, value: object, estimator: Head, X, y, X_val, y_val
) -> LeaderboardRow:
    """Fit one head on the training split and score it on validation."""
    started = time.perf_counter()
    estimator.fit(X, y)
    seconds = time.perf_counter() - started
    metrics = score(
        y_val,
        estimator.predict_proba(X_val),
        estimator.classes_,
        probabilistic=estimator.probabilistic,
    )
    return LeaderboardRow(name, param, value, metrics, seconds, estimator)


def _logreg_rows(X, y, X_val, y_val, params: dict) -> list[LeaderboardRow]:
    Cs = LogisticRegressionHead.grid[1]
    device = params.get("device", AUTO)
    rows = []
    for point in logistic_path(X, y, X_val, y_val, Cs, device=device):
        head = point.head
        metrics = score(y_val, head.predict_proba(X_val), head.classes_)
        rows.append(
            LeaderboardRow(
                "logreg",
                "C",
                point.C,
                metrics,
                point.seconds,
                head,
                preconditioner=point.preconditioner,
            )
        )
    tried = {row.value for row in rows}
    skipped = [c for c in Cs if c not in tried]
    if skipped and rows:
        rows[-1].note = f"path stopped: {len(skipped)} weaker C not better on validation"
    return rows


def _knn_rows(X, y, X_val, y_val, params: dict) -> list[LeaderboardRow]:
    ks = [k for k in KNNHead.grid[1] if k <= len(X)] or [len(X)]
    started = time.perf_counter()
    base = KNNHead(k=max(ks), **{p: v for p, v in params.items() if p != "k"}).fit(X, y)
    similarities, labels = base.neighbors(X_val, max(ks))
    search_seconds = time.perf_counter() - started
    rows = []
    votes = [params["vote"]] if "vote" in params else ["weighted", "majority"]
    for vote in votes:
        for k in ks:
            began = time.perf_counter()
            estimator = clone(base).set_params(k=k, vote=vote)
            estimator.classes_, estimator.n_features_in_ = base.classes_, base.n_features_in_
            estimator.database_, estimator.labels_ = base.database_, base.labels_
            proba = knn_votes(
                similarities[:, :k],
                labels[:, :k],
                len(base.classes_),
                vote=vote,
                temperature=estimator.temperature,
            )
            metrics = score(y_val, proba, base.classes_)
            seconds = time.perf_counter() - began + search_seconds / (len(ks) * len(votes))
            rows.append(LeaderboardRow("knn", "k", k, metrics, seconds, estimator, note=vote))
    return rows
