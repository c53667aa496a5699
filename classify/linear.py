"""Linear heads on standardised embeddings: multinomial logistic regression (our own float32
solver in torch), linear SVM and ridge (scikit-learn solvers, our own prediction code).

The logistic solver minimises scikit-learn's objective exactly, ``C * sum(cross-entropy) +
||W||^2 / 2`` (intercepts not penalised), so ``C`` means the same thing in both. It is fast for
three reasons: L-BFGS runs in coordinates whitened by the eigenbasis of the feature covariance
(embeddings are strongly correlated, which is what makes plain L-BFGS take hundreds of steps);
the loss and gradient are computed block by block, reading the data once per evaluation; and a
sweep over C starts each fit from the previous solution (:func:`logistic_path`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeClassifier
from sklearn.svm import LinearSVC

from headstart.classify.heads import HeadOption, LogitHead, register_head
from headstart.device import AUTO, resolve_device

__all__ = [
    "LinearSVMHead",
    "LogisticRegressionHead",
    "PathPoint",
    "RidgeHead",
    "Standardizer",
    "logistic_path",
    "refit_logistic",
]

# Shared by the heads with an inverse regularisation strength, so they share one option.
_C = HeadOption("C", float, "Inverse regularisation strength.", minimum=0, above_minimum=True)

_BLOCK_ROWS = 1024  # a block of 2048-wide rows (8 MB) stays in cache between its two products
_PRECONDITIONER_ROWS = 4096


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

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticRegressionHead:
        X, index = self._encode(X, y)
        standardizer = Standardizer.fit(X)
        problem = _Problem.build(
            standardizer(X), index, len(self.classes_), resolve_device(self.device)
        )
        W, b, self.n_iter_ = problem.solve(float(self.C), tol=self.tol, max_evals=self.max_iter)
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

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeHead:
        X, index = self._encode(X, y)
        standardizer = Standardizer.fit(X)
        model = RidgeClassifier(alpha=self.alpha).fit(standardizer(X), index)
        self._set_linear(standardizer, np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_))
        return self


@dataclass
class _Problem:
    """Standardised data on a device, and the eigenbasis that preconditions every fit on it."""

    X: torch.Tensor
    y: torch.Tensor
    n_classes: int
    basis: torch.Tensor
    eigenvalues: torch.Tensor

    @classmethod
    def build(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        device: torch.device,
        reuse: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> _Problem:
        data = torch.from_numpy(np.ascontiguousarray(X, np.float32)).to(device)
        if reuse is not None:
            basis, eigenvalues = reuse
        else:
            rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
            sample = data[rows[:_PRECONDITIONER_ROWS].to(device)]
            eigenvalues, basis = torch.linalg.eigh(sample.T @ sample / len(sample))
        return cls(data, torch.from_numpy(y).to(device), n_classes, basis, eigenvalues.clamp(min=0))

    @property
    def preconditioner(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.basis, self.eigenvalues

    def solve(
        self,
        C: float,
        *,
        start: tuple[np.ndarray, np.ndarray] | None = None,
        tol: float = 1e-6,
        max_evals: int = 1000,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Minimise ``mean(CE) + ||W||^2 / (2 C n)``; returns (W, b, loss evaluations)."""
        n, d = self.X.shape
        penalty = 1.0 / (C * n)
        # W = V diag(s) Q^T: in V-coordinates the Hessian is close to the identity (a softmax
        # Hessian is at most 1/4 of the feature covariance, plus the penalty).
        s = (self.eigenvalues / 4 + penalty).rsqrt()
        if start is None:
            V = torch.zeros(self.n_classes, d, device=self.X.device)
            b = torch.zeros(self.n_classes, device=self.X.device)
        else:
            W0, b0 = (torch.from_numpy(a).to(self.X.device) for a in start)
            V, b = (W0 @ self.basis) / s, b0.clone()
        V.requires_grad_(True)
        b.requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [V, b],
            lr=1,
            max_iter=max_evals,
            max_eval=max_evals,
            history_size=20,
            tolerance_grad=tol,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )
        evaluations = 0

        def closure() -> torch.Tensor:
            nonlocal evaluations
            evaluations += 1
            with torch.no_grad():
                W = (V * s) @ self.basis.T
                loss, grad_W, grad_b = self._loss_and_grad(W, b, penalty)
                V.grad = (grad_W @ self.basis) * s
                b.grad = grad_b
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            W = (V * s) @ self.basis.T
        return W.cpu().numpy(), b.detach().cpu().numpy(), evaluations

    def _loss_and_grad(self, W: torch.Tensor, b: torch.Tensor, penalty: float):
        n = len(self.X)
        loss = torch.zeros((), dtype=torch.float64, device=self.X.device)
        grad_W = torch.zeros_like(W)
        grad_b = torch.zeros_like(b)
        for rows in _blocks(n, _BLOCK_ROWS if self.X.device.type == "cpu" else n):
            X, y = self.X[rows], self.y[rows]
            logits = torch.addmm(b, X, W.T)
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            residual = logits.softmax(dim=1)
            residual[torch.arange(len(y), device=y.device), y] -= 1
            grad_W.addmm_(residual.T, X)
            grad_b += residual.sum(dim=0)
        loss = loss / n + penalty / 2 * (W.double() ** 2).sum()
        return loss.float(), grad_W / n + penalty * W, grad_b / n


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@dataclass(frozen=True)
class PathPoint:
    """One C of a logistic path: the fitted head, its validation accuracy, and the cost."""

    C: float
    head: LogisticRegressionHead
    val_accuracy: float
    seconds: float
    evaluations: int
    preconditioner: tuple[torch.Tensor, torch.Tensor]


def logistic_path(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    Cs: Sequence[float],
    *,
    patience: int = 2,
    tol: float = 1e-4,
    max_evals: int = 15,
    device: str = AUTO,
) -> Iterator[PathPoint]:
    """Fit logistic heads for increasing ``Cs``, each warm-started from the last.

    The path stops once ``patience`` consecutive values have not beaten the best validation
    accuracy: weaker regularisation only overfits further, and those fits are the slowest. Path
    fits stop at a looser tolerance than a final fit; the ranking of C does not need more.
    """
    template = LogisticRegressionHead(device=device)
    X, index = template._encode(X, y)
    standardizer = Standardizer.fit(X)
    problem = _Problem.build(standardizer(X), index, len(template.classes_), resolve_device(device))
    start, best, since_best = None, -1.0, 0
    for C in sorted(Cs):
        began = time.perf_counter()
        W, b, evaluations = problem.solve(float(C), start=start, tol=tol, max_evals=max_evals)
        head = LogisticRegressionHead(C=float(C), device=device)
        head.classes_, head.n_features_in_, head.n_iter_ = (
            template.classes_,
            X.shape[1],
            evaluations,
        )
        head._set_linear(standardizer, W, b)
        accuracy = float(np.mean(head.predict(X_val) == np.asarray(y_val)))
        seconds = time.perf_counter() - began
        yield PathPoint(float(C), head, accuracy, seconds, evaluations, problem.preconditioner)
        start = (W, b)
        if accuracy > best:
            best, since_best = accuracy, 0
        else:
            since_best += 1
            if since_best >= patience:
                return


def refit_logistic(
    head: LogisticRegressionHead,
    X: np.ndarray,
    y: np.ndarray,
    preconditioner: tuple[torch.Tensor, torch.Tensor] | None = None,
    tol: float = 1e-5,
) -> LogisticRegressionHead:
    """Fit ``head``'s C on new data (train + validation), starting from ``head``'s solution.

    ``preconditioner`` (a path's :attr:`PathPoint.preconditioner`) saves recomputing it: data
    that grew by a validation split has nearly the same covariance.
    """
    fresh = LogisticRegressionHead(
        C=head.C, max_iter=head.max_iter, tol=head.tol, device=head.device
    )
    X, index = fresh._encode(X, y)
    if not np.array_equal(fresh.classes_, head.classes_):
        return fresh.fit(X, y)
    standardizer = Standardizer.fit(X)
    # The same linear function, re-expressed for the new standardisation.
    raw_W = head.coef_ / head.scale_
    raw_b = head.intercept_ - raw_W @ head.mean_
    W0 = (raw_W * standardizer.scale).astype(np.float32)
    b0 = (raw_b + raw_W @ standardizer.mean).astype(np.float32)
    problem = _Problem.build(
        standardizer(X),
        index,
        len(fresh.classes_),
        resolve_device(head.device),
        reuse=preconditioner,
    )
    W, b, fresh.n_iter_ = problem.solve(
        float(head.C), start=(W0, b0), tol=tol, max_evals=fresh.max_iter
    )
    fresh._set_linear(standardizer, W, b)
    return fresh
