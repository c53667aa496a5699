"""What ``report`` is asked to do, as plain settings: they import nothing heavy, so the command
reads its choices and defaults from here."""

from __future__ import annotations

__all__ = ["DEFAULT_MAP", "MAPS"]

# --map: the projections tried in order for the embedding map (see classify.plots.project_2d).
# t-SNE separates classes as UMAP does, but takes about 20 s for the 2,000 points drawn on two
# cores; PCA is instant and shows only the directions of largest variance.
MAPS: dict[str, tuple[str, ...]] = {
    "auto": ("umap", "tsne"),
    "tsne": ("tsne",),
    "pca": ("pca",),
}
DEFAULT_MAP = "auto"
