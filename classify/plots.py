"""Pictures of a trained head: a confusion matrix, a 2-D map of the embeddings, and a
fine-tuning run's learning curves.

Each writes to a path or to a binary file object (``savefig`` takes both), so the report can
inline the same pictures that ``train --plot`` and ``finetune`` write as files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

__all__ = [
    "plot_confusion",
    "plot_embedding_map",
    "plot_learning_curve",
    "project_2d",
    "pyplot",
]

_MAP_POINTS = 5000
_TSNE_INPUT_DIMS = 50  # t-SNE runs on a PCA of the vectors: much faster, the map barely changes
# Half sklearn's default: the layout of a few thousand points has settled by then (the first
# 250 are early exaggeration), and it halves the time, about 20 s for 2,000 points on 2 cores.
_TSNE_ITERATIONS = 500

Target = TypeVar("Target", Path, BinaryIO)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: np.ndarray,
    path: Target,
    *,
    title: str = "validation accuracy",
) -> Target:
    """Row-normalised confusion matrix (rows: true class), with counts in the cells."""
    from sklearn.metrics import confusion_matrix

    names = [str(c) for c in classes]
    counts = confusion_matrix(
        np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str), labels=names
    )
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    plt = pyplot()
    size = max(4.0, 0.45 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=90)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(names) <= 30:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                colour = "white" if rates[i, j] > 0.5 else "black"
                axes.text(j, i, str(count), ha="center", va="center", fontsize=7, color=colour)
    axes.set_title(f"{title} {np.trace(counts) / max(counts.sum(), 1):.1%}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def project_2d(
    X: np.ndarray, seed: int = 0, *, methods: Sequence[str] = ("umap", "pca")
) -> tuple[np.ndarray, str]:
    """(points, name): the rows of ``X`` in 2-D by the first of ``methods`` ("umap", "tsne",
    "pca") that can run here: UMAP only when it is installed; t-SNE (slower than PCA, but it
    keeps classes apart as UMAP does) only on more than a handful of points. PCA always can.

    Example:
        >>> points, name = project_2d(np.eye(20), methods=("umap", "tsne"))  # doctest: +SKIP
    """
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    for method in methods:
        if method == "umap":
            try:
                import umap
            except ImportError:
                continue
            return umap.UMAP(random_state=seed).fit_transform(X), "UMAP"
        # t-SNE needs a perplexity below the number of points; a handful is better shown by PCA.
        if method == "tsne" and len(X) > 10:
            from sklearn.manifold import TSNE

            if X.shape[1] > _TSNE_INPUT_DIMS and len(X) > _TSNE_INPUT_DIMS:
                X = PCA(n_components=_TSNE_INPUT_DIMS, random_state=seed).fit_transform(X)
            tsne = TSNE(
                perplexity=min(30.0, (len(X) - 1) / 3),
                init="pca",
                max_iter=_TSNE_ITERATIONS,
                random_state=seed,
            )
            return tsne.fit_transform(X), "t-SNE"
        if method == "pca":
            break
        if method not in ("umap", "tsne"):
            raise ValueError(f"unknown projection {method!r}; use umap, tsne or pca")
    return PCA(n_components=2, random_state=seed).fit_transform(X), "PCA"


def plot_embedding_map(
    X: np.ndarray,
    labels: np.ndarray,
    path: Target,
    seed: int = 0,
    *,
    max_points: int = _MAP_POINTS,
    methods: Sequence[str] = ("umap", "pca"),
) -> Target:
    """Embeddings projected to 2-D (see :func:`project_2d`), coloured by class; at most
    ``max_points`` of them, drawn at random."""
    rng = np.random.default_rng(seed)
    if len(X) > max_points:
        rows = rng.choice(len(X), max_points, replace=False)
        X, labels = X[rows], labels[rows]
    points, method = project_2d(X, seed, methods=methods)
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 6))
    names = sorted({str(label) for label in labels})
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, name in enumerate(names):
        mine = np.asarray(labels).astype(str) == name
        axes.scatter(
            points[mine, 0], points[mine, 1], s=6, color=colours(i % colours.N), label=name
        )
    if len(names) <= 20:
        axes.legend(markerscale=3, fontsize=7, loc="best")
    axes.set_title(f"embeddings, {method}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_learning_curve(history: Sequence[Mapping[str, Any]], path: Target) -> Target:
    """Loss and validation accuracy per epoch from ``metrics.jsonl`` records (epoch 0: the
    linear probe, which has no training loss)."""
    plt = pyplot()
    figure, (losses, accuracy) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in history]
    trained = [r for r in history if r.get("train_loss") is not None]
    losses.plot(
        [r["epoch"] for r in trained], [r["train_loss"] for r in trained], "o-", label="train"
    )
    losses.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    losses.set(xlabel="epoch", ylabel="loss", title="loss")
    losses.legend()
    accuracy.plot(epochs, [r["val_accuracy"] for r in history], "o-", color="tab:green")
    accuracy.set(xlabel="epoch (0: linear probe)", ylabel="accuracy", title="validation accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
