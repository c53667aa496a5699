"""Linear heads on standardised embeddings: multinomial logistic regression (our own float32
solver in torch, :mod:`~headstart.classify.logistic`), ridge (the normal equations, from one
pass) and a linear SVM (scikit-learn's liblinear, on arrays).

Logistic regression and ridge train out of core through ``fit_blocks(source)``: the
standardiser comes from one pass of sums and sums of squares, the solver then reads the blocks
again as often as it needs. ``fit(X, y)`` on arrays keeps the data resident, as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import RidgeClassifier
from sklearn.svm import LinearSVC

from headstart.classify.blocks import ArrayBlocks, Blocks, as_blocks
from headstart.classify.heads import HeadOption, LogitHead, register_head
from headstart.classify.logistic import (
    Preconditioner,
    Resident,
    Streamed,
    block_bytes_per_row,
    solve_lockstep,
    solver_state_bytes,
)
from headstart.classify.metrics import Metrics
from headstart.classify.moments import Moments, gather_moments
from headstart.device import AUTO, resolve_device

__all__ = [
    "LinearSVMHead",
    "LogisticRegressionHead",
    "PathPoint",
    "RidgeHead",
    "Standardizer",
    "logistic_path",
    "refit_logistic",
    "ridge_solutions",
]

# Shared by the heads with an inverse regularisation strength, so they share one option.
_C = HeadOption("C", float, "Inverse regularisation strength.", minimum=0, above_minimum=True)

_PATH_EVALUATIONS = 60  # loss evaluations of a lockstep path: enough to rank C, not a final fit
_WARM_EVALUATIONS = 15  # per C of a warm-started path


class Standardizer:
    """Per-feature mean and scale (scikit-learn's StandardScaler, constant features kept)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean, self.scale = mean.astype(np.float32), scale.astype(np.float32)

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        # torch's reductions use every core (and sum in cascades, so float32 stays accurate).
        data = torch.from_numpy(X)
        mean = data.mean(dim=0)
        scale = (data - mean).square_().mean(dim=0).sqrt_()
        scale[scale < 1e-6] = 1.0
        return cls(mean.numpy(), scale.numpy())

    @classmethod
    def of_moments(cls, moments: Moments) -> Standardizer:
        return cls(moments.mean, moments.scale)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        out = torch.from_numpy(np.asarray(X, np.float32)) - torch.from_numpy(self.mean)
        return out.div_(torch.from_numpy(self.scale)).numpy()


class _LinearHead(LogitHead):
    """Prediction shared by the linear heads: standardise, then ``X W^T + b``."""

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """One score per class (the logits), shape (n, n_classes), also for two classes."""
        X = self._check_features(X)
        return (X - self.mean_) / self.scale_ @ self.coef_.T + self.intercept_

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean_,
            "scale": self.scale_,
            "coef": self.coef_,
            "intercept": self.intercept_,
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean_, self.scale_ = arrays["mean"], arrays["scale"]
        self.coef_, self.intercept_ = arrays["coef"], arrays["intercept"]
        self.n_features_in_ = self.coef_.shape[1]

    def _set_linear(
        self, standardizer: Standardizer, coef: np.ndarray, intercept: np.ndarray
    ) -> None:
        self.mean_, self.scale_ = standardizer.mean, standardizer.scale
        if coef.shape[0] == 1:  # binary solvers give one direction; keep one row per class
            coef, intercept = (
                np.vstack([-coef, coef]) / 2,
                np.concatenate([-intercept, intercept]) / 2,
            )
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = intercept.astype(np.float32)


@register_head("logreg")
class LogisticRegressionHead(_LinearHead):
    """Multinomial logistic regression with an L2 penalty, on standardised features.

    Example:
        >>> head = LogisticRegressionHead(C=0.1).fit(X_train, y_train)  # doctest: +SKIP
        >>> head.predict_proba(X_test).shape
        (100, 10)
    """

    options = (_C,)
    grid = ("C", tuple(float(c) for c in np.logspace(-5, 2, 8)))

    def __init__(
        self, C: float = 1.0, *, max_iter: int = 1000, tol: float = 1e-6, device: str = AUTO
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    streams = True

    @classmethod
    def fit_bytes(cls, n: int, d: int, n_classes: int, n_values: int = 1) -> int:
        return solver_state_bytes(d, n_classes, n_values)

    @classmethod
    def block_row_bytes(cls, d: int, n_classes: int, n_values: int = 1) -> int:
        return block_bytes_per_row(d, n_classes, n_values)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticRegressionHead:
        X, index = self._encode(X, y)
        standardizer = Standardizer.fit(X)
        data = Resident(standardizer(X), index, resolve_device(self.device))
        [(W, b)], self.n_iter_ = solve_lockstep(
            data,
            len(self.classes_),
            [float(self.C)],
            Preconditioner.of_resident(data),
            tol=self.tol,
            max_evals=self.max_iter,
        )
        self._set_linear(standardizer, W, b)
        return self

    def fit_blocks(self, source: Blocks) -> LogisticRegressionHead:
        """Fit out of core: one pass for the standardiser, a sample for the preconditioner,
        then the solver's passes, each reading ``source`` block by block."""
        source = self._encode_blocks(source)
        device = resolve_device(self.device)
        standardizer = Standardizer.of_moments(gather_moments(source, device))
        data = Streamed(source, standardizer.mean, standardizer.scale, device)
        [(W, b)], self.n_iter_ = solve_lockstep(
            data,
            len(self.classes_),
            [float(self.C)],
            Preconditioner.of_streamed(data),
            tol=self.tol,
            max_evals=self.max_iter,
        )
        self._set_linear(standardizer, W, b)
        return self


@register_head("linear-svm")
class LinearSVMHead(_LinearHead):
    """One-vs-rest linear SVM (squared hinge, liblinear). ``predict_proba`` is a softmax of the
    margins: a ranking, not calibrated probabilities."""

    probabilistic = False
    options = (_C,)
    grid = ("C", tuple(float(c) for c in np.logspace(-5, 1, 7)))

    def __init__(self, C: float = 1.0, *, max_iter: int = 2000) -> None:
        self.C = C
        self.max_iter = max_iter

    @classmethod
    def fit_bytes(cls, n: int, d: int, n_classes: int, n_values: int = 1) -> int:
        # Every row as read and standardised (float32), and liblinear's float64 copy.
        return (4 + 4 + 8) * n * d

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearSVMHead:
        X, index = self._encode(X, y)
        standardizer = Standardizer.fit(X)
        model = LinearSVC(C=self.C, max_iter=self.max_iter).fit(standardizer(X), index)
        self.n_iter_ = model.n_iter_
        self._set_linear(standardizer, model.coef_, model.intercept_)
        return self


@register_head("ridge")
class RidgeHead(_LinearHead):
    """Least-squares classifier on +-1 targets (scikit-learn's RidgeClassifier). Like the SVM,
    its ``predict_proba`` is a softmax of scores, not calibrated probabilities."""

    probabilistic = False
    options = (HeadOption("alpha", float, "L2 strength.", minimum=0, above_minimum=True),)
    grid = ("alpha", tuple(float(a) for a in np.logspace(-1, 5, 7)))

    streams = True

    def __init__(self, alpha: float = 1.0, *, device: str = AUTO) -> None:
        self.alpha = alpha
        self.device = device

    @classmethod
    def fit_bytes(cls, n: int, d: int, n_classes: int, n_values: int = 1) -> int:
        # The Gram matrix, its eigenvectors and a working copy (float64), the class sums.
        return 8 * (3 * d * d + 2 * n_classes * d) + 4 * n_values * n_classes * d

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeHead:
        X, index = self._encode(X, y)
        standardizer = Standardizer.fit(X)
        model = RidgeClassifier(alpha=self.alpha).fit(standardizer(X), index)
        self._set_linear(standardizer, np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_))
        return self

    def fit_blocks(self, source: Blocks) -> RidgeHead:
        """Fit out of core: one pass accumulates ``X^T X`` and the class sums (float64), then
        the normal equations are solved; :func:`ridge_solutions` serves a whole grid so."""
        source = self._encode_blocks(source)
        moments = gather_moments(
            source, resolve_device(self.device), gram=True, n_classes=len(self.classes_)
        )
        [(coef, intercept)] = ridge_solutions(moments, [self.alpha])
        self._set_linear(Standardizer.of_moments(moments), coef, intercept)
        return self


def ridge_solutions(
    moments: Moments, alphas: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(coef, intercept) of scikit-learn's ``RidgeClassifier(alpha)`` on the standardised rows
    for every alpha, from one pass's moments: the +-1 targets' cross products follow from the
    class sums, and one eigendecomposition serves every alpha."""
    n, mean, scale = moments.n, moments.mean, moments.scale
    sums, counts = moments.class_sums, moments.class_counts
    # The standardised rows' Gram matrix: D^-1 (X^T X - n mu mu^T) D^-1.
    gram = (moments.gram - n * np.outer(mean, mean)) / np.outer(scale, scale)
    if len(counts) == 2:  # one target: +1 for the second class, -1 for the first
        cross = (sums[1] - sums[0])[:, None]
        target_sums = np.array([counts[1] - counts[0]])
    else:
        cross = 2 * sums.T - moments.sum[:, None]
        target_sums = 2 * counts - n
    # Standardised rows are centred, so centring the targets changes nothing in X^T y.
    cross = (cross - np.outer(mean, target_sums)) / scale[:, None]
    eigenvalues, basis = np.linalg.eigh(gram)
    eigenvalues = np.maximum(eigenvalues, 0)
    rotated = basis.T @ cross
    solutions = []
    for alpha in alphas:
        W = basis @ (rotated / (eigenvalues + float(alpha))[:, None])
        solutions.append((W.T, target_sums / n))
    return solutions


@dataclass(frozen=True)
class PathPoint:
    """One C of a logistic path: the fitted head, its validation accuracy, and the cost."""

    C: float
    head: LogisticRegressionHead
    val_accuracy: float
    seconds: float
    evaluations: int
    preconditioner: Preconditioner
    metrics: Metrics | None = None  # on validation, all of them


def logistic_path(
    X: np.ndarray | Blocks,
    y: np.ndarray | None,
    X_val: np.ndarray | Blocks,
    y_val: np.ndarray | None,
    Cs: Sequence[float],
    *,
    tol: float = 1e-4,
    max_evals: int | None = None,
    device: str = AUTO,
    lockstep: bool | None = None,
    patience: int = 2,
) -> Iterator[PathPoint]:
    """Fit and score a logistic head for each C of ``Cs`` on validation. ``X`` and ``X_val``
    are arrays with their labels, or block sources (labels ignored). Path fits stop at a
    looser tolerance than a final fit; the ranking of C does not need more.

    ``lockstep`` (default: when ``X`` streams from the cache) solves every C at once, one
    pass over the rows per evaluation for all of them, and scores them in one pass: reading
    is what costs out of core. On rows already in memory the arithmetic costs, m C's in each
    product, so there the C are fitted one by one from small to large, each warm-started from
    the last, stopping once ``patience`` values have not beaten the best.
    """
    from headstart.classify.scoring import score_blocks

    began = time.perf_counter()
    template = LogisticRegressionHead(device=device)
    train = template._encode_blocks(as_blocks(X, y))
    val, Cs, k = as_blocks(X_val, y_val), sorted(float(C) for C in Cs), len(template.classes_)
    torch_device = resolve_device(device)
    if lockstep is None:
        lockstep = not isinstance(train, ArrayBlocks)
    if lockstep:
        standardizer = Standardizer.of_moments(gather_moments(train, torch_device))
        data = Streamed(train, standardizer.mean, standardizer.scale, torch_device)
        preconditioner = Preconditioner.of_streamed(data)
    else:
        rows = train.read_all()  # arrays already: no copy
        standardizer = Standardizer.fit(rows)
        data = Resident(standardizer(rows), train.codes, torch_device)
        preconditioner = Preconditioner.of_resident(data)

    def head_of(C: float, W: np.ndarray, b: np.ndarray, evaluations: int):
        head = LogisticRegressionHead(C=C, device=device)
        head.classes_, head.n_features_in_, head.n_iter_ = template.classes_, train.dim, evaluations
        head._set_linear(standardizer, W, b)
        return head

    if lockstep:
        evals = _PATH_EVALUATIONS if max_evals is None else max_evals
        solutions, n = solve_lockstep(data, k, Cs, preconditioner, tol=tol, max_evals=evals)
        heads = [head_of(C, W, b, n) for C, (W, b) in zip(Cs, solutions, strict=True)]
        seconds = (time.perf_counter() - began) / len(Cs)
        for head, metrics in zip(heads, score_blocks(heads, val), strict=True):
            yield PathPoint(head.C, head, metrics.accuracy, seconds, n, preconditioner, metrics)
        return
    start, best, since_best = None, -1.0, 0
    evals = _WARM_EVALUATIONS if max_evals is None else max_evals
    for C in Cs:
        [(W, b)], n = solve_lockstep(
            data, k, [C], preconditioner, start=start, tol=tol, max_evals=evals
        )
        head = head_of(C, W, b, n)
        [metrics] = score_blocks([head], val)
        seconds, began = time.perf_counter() - began, time.perf_counter()
        yield PathPoint(C, head, metrics.accuracy, seconds, n, preconditioner, metrics)
        start = [(W, b)]
        best, since_best = (
            (metrics.accuracy, 0) if metrics.accuracy > best else (best, since_best + 1)
        )
        if since_best >= patience:
            return


def refit_logistic(
    head: LogisticRegressionHead,
    X: np.ndarray | Blocks,
    y: np.ndarray | None = None,
    preconditioner: Preconditioner | None = None,
    tol: float = 1e-5,
) -> LogisticRegressionHead:
    """Fit ``head``'s C on new data (train + validation), starting from ``head``'s solution.

    ``X`` is an array with its labels ``y``, or a block source (such as train and validation
    chained). ``preconditioner`` (a path's :attr:`PathPoint.preconditioner`) saves recomputing
    it: data that grew by a validation split has nearly the same covariance.
    """
    fresh = LogisticRegressionHead(
        C=head.C, max_iter=head.max_iter, tol=head.tol, device=head.device
    )
    source = fresh._encode_blocks(as_blocks(X, y))
    if not np.array_equal(fresh.classes_, head.classes_):
        return fresh.fit_blocks(source)
    device = resolve_device(head.device)
    standardizer = Standardizer.of_moments(gather_moments(source, device))
    # The same linear function, re-expressed for the new standardisation.
    raw_W = head.coef_ / head.scale_
    raw_b = head.intercept_ - raw_W @ head.mean_
    W0 = (raw_W * standardizer.scale).astype(np.float32)
    b0 = (raw_b + raw_W @ standardizer.mean).astype(np.float32)
    data = Streamed(source, standardizer.mean, standardizer.scale, device)
    if preconditioner is None:
        preconditioner = Preconditioner.of_streamed(data)
    [(W, b)], fresh.n_iter_ = solve_lockstep(
        data,
        len(fresh.classes_),
        [float(head.C)],
        preconditioner,
        start=[(W0, b0)],
        tol=tol,
        max_evals=fresh.max_iter,
    )
    fresh._set_linear(standardizer, W, b)
    return fresh
