"""Hyper-parameter sweeps on a validation split, and the leaderboard they produce.

Linear heads follow the CLIP linear-probe protocol: a log grid of the regularisation strength,
the best value chosen on validation, then a refit on train + validation. Every sweep shares its
passes over the data: ``logreg`` solves its whole C grid in lockstep
(:func:`~headstart.classify.linear.logistic_path`), ``ridge`` solves every alpha from one pass's
normal equations, kNN searches once with the largest k and scores every k from those
neighbors; and the heads of a grid are scored on validation in one pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from headstart.classify.blocks import ArrayBlocks, Blocks, as_blocks
from headstart.classify.heads import Head, get_head
from headstart.classify.linear import (
    LogisticRegressionHead,
    RidgeHead,
    Standardizer,
    logistic_path,
    refit_logistic,
    ridge_solutions,
)
from headstart.classify.metrics import Metrics
from headstart.classify.moments import gather_moments
from headstart.classify.neighbors import KNNHead, knn_votes
from headstart.classify.scoring import Tally, score_blocks
from headstart.device import AUTO, resolve_device

__all__ = ["LeaderboardRow", "fit_and_score", "refit", "sweep", "sweep_blocks"]


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
    """Score every grid value of every head on the validation split (arrays)."""
    return sweep_blocks(
        heads, ArrayBlocks.of(X, y), ArrayBlocks.of(X_val, y_val), base_params=base_params
    )


def sweep_blocks(
    heads: Sequence[str],
    train: Blocks,
    val: Blocks,
    *,
    base_params: dict[str, dict] | None = None,
) -> list[LeaderboardRow]:
    """Score every grid value of every head on the validation source, reading both a block at
    a time (heads that cannot stream read the rows they need; the caller checked the budget)."""
    rows: list[LeaderboardRow] = []
    for name in heads:
        params = (base_params or {}).get(name, {})
        if name == "logreg":
            rows.extend(_logreg_rows(train, val, params))
        elif name == "ridge":
            rows.extend(_ridge_rows(train, val, params))
        elif name == "knn":
            rows.extend(_knn_rows(train, val, params))
        else:
            grid = get_head(name).grid
            values = grid[1] if grid else (None,)
            for value in values:
                extra = {grid[0]: value} if grid else {}
                estimator = get_head(name)(**(params | extra))
                rows.append(
                    fit_and_score(name, grid[0] if grid else None, value, estimator, train, val)
                )
    return rows


def refit(row: LeaderboardRow, X: np.ndarray | Blocks, y: np.ndarray | None = None) -> Head:
    """The chosen head fitted again on all labelled data (train + validation: arrays, or a
    block source such as the two chained); a head built without images (zeroshot) is kept."""
    if not row.estimator.learns_from_images:
        return row.estimator
    if isinstance(row.estimator, LogisticRegressionHead):
        return refit_logistic(row.estimator, X, y, row.preconditioner)
    return clone(row.estimator).fit_blocks(as_blocks(X, y))


def fit_and_score(
    name: str, param: str | None, value: object, estimator: Head, X, y, X_val=None, y_val=None
) -> LeaderboardRow:
    """Fit one head on the training split and score it on validation: arrays
    ``(X, y, X_val, y_val)``, or two block sources ``(train, val)``."""
    train, val = (X, y) if isinstance(X, Blocks) else (as_blocks(X, y), as_blocks(X_val, y_val))
    started = time.perf_counter()
    estimator.fit_blocks(train)
    seconds = time.perf_counter() - started
    [metrics] = score_blocks([estimator], val)
    return LeaderboardRow(name, param, value, metrics, seconds, estimator)


def _logreg_rows(train: Blocks, val: Blocks, params: dict) -> list[LeaderboardRow]:
    Cs = LogisticRegressionHead.grid[1]
    device = params.get("device", AUTO)
    rows = [
        LeaderboardRow(
            "logreg",
            "C",
            point.C,
            point.metrics,
            point.seconds,
            point.head,
            preconditioner=point.preconditioner,
        )
        for point in logistic_path(train, None, val, None, Cs, device=device)
    ]
    skipped = len(Cs) - len(rows)
    if skipped and rows:
        rows[-1].note = f"path stopped: {skipped} weaker C not better on validation"
    return rows


def _ridge_rows(train: Blocks, val: Blocks, params: dict) -> list[LeaderboardRow]:
    started = time.perf_counter()
    template = RidgeHead(**{p: v for p, v in params.items() if p != "alpha"})
    train = template._encode_blocks(train)
    device = resolve_device(template.device)
    moments = gather_moments(train, device, gram=True, n_classes=len(template.classes_))
    standardizer = Standardizer.of_moments(moments)
    alphas = [params["alpha"]] if "alpha" in params else list(RidgeHead.grid[1])
    heads = []
    for alpha, (coef, intercept) in zip(alphas, ridge_solutions(moments, alphas), strict=True):
        head = clone(template).set_params(alpha=alpha)
        head.classes_, head.n_features_in_ = template.classes_, template.n_features_in_
        head._set_linear(standardizer, coef, intercept)
        heads.append(head)
    seconds = (time.perf_counter() - started) / len(heads)
    return [
        LeaderboardRow("ridge", "alpha", alpha, metrics, seconds, head)
        for alpha, head, metrics in zip(alphas, heads, score_blocks(heads, val), strict=True)
    ]


def _knn_rows(train: Blocks, val: Blocks, params: dict) -> list[LeaderboardRow]:
    ks = [k for k in KNNHead.grid[1] if k <= len(train)] or [len(train)]
    votes = [params["vote"]] if "vote" in params else ["weighted", "majority"]
    started = time.perf_counter()
    base = KNNHead(k=max(ks), **{p: v for p, v in params.items() if p != "k"}).fit_blocks(train)
    estimators = {}
    for vote in votes:
        for k in ks:
            estimator = clone(base).set_params(k=k, vote=vote)
            estimator.classes_, estimator.n_features_in_ = base.classes_, base.n_features_in_
            estimator.index_, estimator.labels_ = base.index_, base.labels_
            estimators[vote, k] = estimator
    # One search a validation block with the largest k scores every k and vote.
    tallies = {
        key: Tally(base.classes_, val.classes, len(val), probabilistic=True) for key in estimators
    }
    for X, codes in val.blocks():
        similarities, labels = base.neighbors(X, max(ks))
        for (vote, k), estimator in estimators.items():
            proba = knn_votes(
                similarities[:, :k],
                labels[:, :k],
                len(base.classes_),
                vote=vote,
                temperature=estimator.temperature,
            )
            tallies[vote, k].add(proba, codes)
    seconds = (time.perf_counter() - started) / len(estimators)
    return [
        LeaderboardRow("knn", "k", k, tallies[vote, k].metrics(), seconds, estimator, note=vote)
        for (vote, k), estimator in estimators.items()
    ]
