"""The multinomial logistic solver: preconditioned L-BFGS over data read block by block.

It minimises scikit-learn's objective exactly, ``C * sum(cross-entropy) + ||W||^2 / 2``
(intercepts not penalised), so ``C`` means the same thing in both. Three things make it fast:
L-BFGS runs in coordinates whitened by the eigenbasis of the feature covariance (embeddings are
strongly correlated, which is what makes plain L-BFGS take hundreds of steps); the loss and
gradient are computed block by block, reading the data once per evaluation; and several values
of C are solved in lockstep, so one pass over the data serves all of them.

Why lockstep: out of core, a pass over the data (reading the shards, widening float16) is the
cost, not the arithmetic. The problems for different C are independent, so their summed
objective is minimised exactly where each one is; L-BFGS on the sum evaluates every C's loss and
gradient from the same block in one matrix product (``X @ [W_1; ...; W_m]^T``). A sweep over
eight C then reads the data about as often as one fit does, where fitting them one after the
other, even warm-started, reads it once per C per evaluation. The price is m C's arithmetic in
every product: on rows already in memory, where arithmetic is the cost, the warm-started path
that stops early is faster (8,000 x 256, 10 classes, 2 cores: 7 s against 17 s), so
:func:`~headstart.classify.linear.logistic_path` runs lockstep only when it streams.

The data is either resident (``fit(X, y)`` on arrays: one tensor on the device, as before) or
streamed from a :class:`~headstart.classify.blocks.Blocks` source and standardised block by
block on the device; the solver does not know which.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from headstart.classify.blocks import Blocks

__all__ = [
    "PRECONDITIONER_ROWS",
    "Preconditioner",
    "Resident",
    "Streamed",
    "block_bytes_per_row",
    "load_solver",
    "solve_lockstep",
    "solver_state_bytes",
]

_BLOCK_ROWS = 1024  # a block of 2048-wide rows (8 MB) stays in cache between its two products
PRECONDITIONER_ROWS = 4096
_HISTORY = 20  # L-BFGS curvature pairs


class _Data:
    """Standardised rows and their class codes, on the solver's device, a block at a time."""

    n: int
    d: int
    device: torch.device

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


class Resident(_Data):
    """Standardised data held whole on the device (what ``fit(X, y)`` on arrays uses)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, device: torch.device) -> None:
        self.X = torch.from_numpy(np.ascontiguousarray(X, np.float32)).to(device)
        self.y = torch.from_numpy(np.asarray(y, np.int64)).to(device)
        self.n, self.d = self.X.shape
        self.device = device

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = _BLOCK_ROWS if self.device.type == "cpu" else self.n
        for start in range(0, self.n, size):
            yield self.X[start : start + size], self.y[start : start + size]


class Streamed(_Data):
    """Rows read from a block source and standardised on the device, one block at a time."""

    def __init__(
        self, source: Blocks, mean: np.ndarray, scale: np.ndarray, device: torch.device
    ) -> None:
        self.source = source
        self.n, self.d = len(source), source.dim
        self.device = device
        self.mean = torch.from_numpy(np.asarray(mean, np.float32)).to(device)
        self.scale = torch.from_numpy(np.asarray(scale, np.float32)).to(device)

    def standardise(self, X: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(X).to(self.device) - self.mean).div_(self.scale)

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for X, y in self.source.blocks():
            yield self.standardise(X), torch.from_numpy(y).to(self.device)


@dataclass(frozen=True)
class Preconditioner:
    """Eigenbasis and eigenvalues of the (standardised) feature covariance, from a sample."""

    basis: torch.Tensor
    eigenvalues: torch.Tensor

    @classmethod
    def of_sample(cls, sample: torch.Tensor) -> Preconditioner:
        eigenvalues, basis = torch.linalg.eigh(sample.T @ sample / len(sample))
        return cls(basis, eigenvalues.clamp(min=0))

    @classmethod
    def of_resident(cls, data: Resident) -> Preconditioner:
        rows = torch.randperm(data.n, generator=torch.Generator().manual_seed(0))
        return cls.of_sample(data.X[rows[:PRECONDITIONER_ROWS].to(data.device)])

    @classmethod
    def of_streamed(cls, data: Streamed, seed: int = 0) -> Preconditioner:
        """From at most :data:`PRECONDITIONER_ROWS` rows drawn at random (read by key)."""
        count = min(PRECONDITIONER_ROWS, data.n)
        rows = np.sort(np.random.default_rng(seed).choice(data.n, count, replace=False))
        return cls.of_sample(data.standardise(data.source.rows(rows)))

    def to(self, device: torch.device) -> Preconditioner:
        return Preconditioner(self.basis.to(device), self.eigenvalues.to(device))


def load_solver() -> None:
    """Load the optimiser's code now. torch's first optimiser pulls in modules worth ~150 MB
    of resident memory, a fixed cost: paid before a budget is measured, it counts as what the
    process already holds instead of surprising the block sizes derived after."""
    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])


def solver_state_bytes(d: int, n_classes: int, n_C: int = 1) -> int:
    """What the solver holds besides a block: the preconditioner's sample (and its
    standardised copy) and eigenbasis, and for each C the parameters, gradient, search
    direction and L-BFGS history (float32)."""
    parameters = n_C * n_classes * (d + 1)
    return 4 * (2 * PRECONDITIONER_ROWS * d + 3 * d * d + parameters * (2 * _HISTORY + 6))


def block_bytes_per_row(d: int, n_classes: int, n_C: int = 1) -> int:
    """Bytes one row of a block costs in flight: its float16 and float32 copies, the
    standardised copy and a temporary, and the logits, probabilities and residuals of every
    C."""
    return 2 * d + 4 * d * 3 + 4 * 3 * n_classes * n_C


def solve_lockstep(
    data: _Data,
    n_classes: int,
    Cs: Sequence[float],
    preconditioner: Preconditioner,
    *,
    start: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    tol: float = 1e-6,
    max_evals: int = 1000,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Minimise ``mean(CE) + ||W||^2 / (2 C n)`` for every C of ``Cs`` at once; returns one
    (W, b) per C and the number of loss evaluations (passes over the data)."""
    n, d, device = data.n, data.d, data.device
    m = len(Cs)
    basis = preconditioner.basis.to(device)
    eigenvalues = preconditioner.eigenvalues.to(device)
    penalty = torch.tensor([1.0 / (float(C) * n) for C in Cs], device=device)
    # W_c = V_c diag(s_c) Q^T: in V-coordinates the Hessian is close to the identity (a softmax
    # Hessian is at most 1/4 of the feature covariance, plus the penalty).
    s = (eigenvalues[None, :] / 4 + penalty[:, None]).rsqrt()  # (m, d)
    if start is None:
        V = torch.zeros(m, n_classes, d, device=device)
        b = torch.zeros(m, n_classes, device=device)
    else:
        W0 = torch.stack([torch.from_numpy(np.asarray(w, np.float32)) for w, _ in start])
        b = torch.stack([torch.from_numpy(np.asarray(c, np.float32)) for _, c in start])
        V, b = (W0.to(device) @ basis) / s[:, None, :], b.to(device)
    V.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [V, b],
        lr=1,
        max_iter=max_evals,
        max_eval=max_evals,
        history_size=_HISTORY,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        with torch.no_grad():
            W = (V * s[:, None, :]) @ basis.T
            loss, grad_W, grad_b = _loss_and_grad(data, W, b, penalty)
            V.grad = (grad_W @ basis) * s[:, None, :]
            b.grad = grad_b
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        W = ((V * s[:, None, :]) @ basis.T).cpu().numpy()
    bias = b.detach().cpu().numpy()
    return [(W[i], bias[i]) for i in range(m)], evaluations


def _loss_and_grad(data: _Data, W: torch.Tensor, b: torch.Tensor, penalty: torch.Tensor):
    """Summed objective of the m problems, and each one's gradient, from one pass."""
    m, k, d = W.shape
    flat_W, flat_b = W.reshape(m * k, d), b.reshape(m * k)
    loss = torch.zeros(m, dtype=torch.float64, device=W.device)
    grad_W = torch.zeros_like(flat_W)
    grad_b = torch.zeros_like(flat_b)
    for X, y in data.blocks():
        logits = torch.addmm(flat_b, X, flat_W.T).view(len(y), m, k)
        log_p = logits.log_softmax(dim=2)
        picked = log_p.gather(2, y.view(-1, 1, 1).expand(-1, m, 1)).squeeze(2)
        loss -= picked.sum(dim=0).double()
        residual = log_p.exp_()
        residual[torch.arange(len(y), device=y.device), :, y] -= 1
        residual = residual.view(len(y), m * k)
        grad_W.addmm_(residual.T, X)
        grad_b += residual.sum(dim=0)
    n = data.n
    squares = (W.double() ** 2).sum(dim=(1, 2))
    total = (loss / n + penalty.double() / 2 * squares).sum()
    grad_W = grad_W.view(m, k, d) / n + penalty[:, None, None] * W
    return total, grad_W, grad_b.view(m, k) / n  # float64: m losses summed keep their digits
