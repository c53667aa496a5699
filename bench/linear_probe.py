"""Linear-probe sweep: headstart's logreg sweep against scikit-learn, side by side.

Data: 50,000 + 10,000 embedding-like vectors of 2,048 dimensions in 10 classes, made here: a
power-law spectrum of correlated features (as pooled CNN features have), passed through a ReLU,
with the class signal in the leading directions and weak enough that validation accuracy lands
between 60% and 90%. Features are standardised for both sides.

Baseline: ``LogisticRegression(C, max_iter=1000)`` fitted once per C on the 8-value grid.
headstart: ``sweep(["logreg"], ...)`` over the same grid (a warm-started, preconditioned path
that stops once validation accuracy stops improving) plus the refit of the chosen C on
train + validation. Both run on this machine's CPU, one after the other.

    python bench/linear_probe.py [--train 50000] [--dim 2048]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from headstart.classify.linear import LogisticRegressionHead
from headstart.classify.sweep import refit, sweep


def embedding_like(n: int, d: int, k: int, signal: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, d + 1, dtype=np.float32) ** -0.5
    means = rng.normal(size=(k, 64)).astype(np.float32) * signal
    y = rng.integers(0, k, size=n)
    Z = rng.normal(size=(n, d)).astype(np.float32)
    Z[:, :64] += means[y]
    Z *= spectrum
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)).astype(np.float32))
    return np.maximum(Z @ Q + 0.02, 0).astype(np.float32), y.astype(str)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--val", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--signal", type=float, default=0.3)
    args = parser.parse_args()
    X, y = embedding_like(args.train + args.val, args.dim, 10, args.signal)
    X_train, y_train, X_val, y_val = (
        X[: args.train],
        y[: args.train],
        X[args.train :],
        y[args.train :],
    )
    Cs = LogisticRegressionHead.grid[1]
    print(
        f"{args.train} train + {args.val} validation vectors x {args.dim}, 10 classes; "
        f"C grid {', '.join(f'{c:.0e}' for c in Cs)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    started = time.perf_counter()
    rows = sweep(["logreg"], X_train, y_train, X_val, y_val)
    chosen = max(rows, key=lambda r: r.metrics.accuracy)
    refit(chosen, X, y)
    ours = time.perf_counter() - started
    print("\nheadstart sweep (path; then refit on train+validation)")
    for row in rows:
        print(
            f"  C={row.value:.0e}  val acc {row.metrics.accuracy:.4f}  {row.fit_seconds:6.1f} s"
            f"  {row.estimator.n_iter_} evaluations  {row.note}"
        )
    print(
        f"  total {ours:.1f} s, best val acc {chosen.metrics.accuracy:.4f} at C={chosen.value:.0e}"
    )

    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std < 1e-6] = 1
    train_std, val_std = (X_train - mean) / std, (X_val - mean) / std
    print("\nscikit-learn LogisticRegression(max_iter=1000), once per C")
    baseline, best = 0.0, 0.0
    for C in Cs:
        began = time.perf_counter()
        model = LogisticRegression(C=C, max_iter=1000).fit(train_std, y_train)
        seconds = time.perf_counter() - began
        accuracy = model.score(val_std, y_val)
        baseline += seconds
        best = max(best, accuracy)
        print(
            f"  C={C:.0e}  val acc {accuracy:.4f}  {seconds:6.1f} s  "
            f"{int(model.n_iter_[0])} iterations"
        )
    print(f"  total {baseline:.1f} s, best val acc {best:.4f}")
    print(
        f"\nspeed-up {baseline / ours:.1f}x (target >= 10x); best validation accuracy "
        f"{chosen.metrics.accuracy:.4f} vs {best:.4f}, difference "
        f"{100 * (chosen.metrics.accuracy - best):+.2f} points (target within 0.5)"
    )


if __name__ == "__main__":
    main()
