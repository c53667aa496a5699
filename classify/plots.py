"""Pictures of a trained head: a confusion matrix and a 2-D map of the embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_confusion", "plot_embedding_map", "pyplot"]

_MAP_POINTS = 5000


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray, path: Path) -> Path:
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
    axes.set_title(f"validation accuracy {np.trace(counts) / max(counts.sum(), 1):.1%}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_embedding_map(X: np.ndarray, labels: np.ndarray, path: Path, seed: int = 0) -> Path:
    """Embeddings projected to 2-D (UMAP when installed, else PCA), coloured by class."""
    rng = np.random.default_rng(seed)
    if len(X) > _MAP_POINTS:
        rows = rng.choice(len(X), _MAP_POINTS, replace=False)
        X, labels = X[rows], labels[rows]
    try:
        import umap

        points, method = umap.UMAP(random_state=seed).fit_transform(X), "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        points, method = PCA(n_components=2, random_state=seed).fit_transform(X), "PCA"
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
