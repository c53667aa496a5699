"""What ``report`` is asked to do, as plain settings: they import nothing heavy, so the command
reads its choices and defaults from here."""

from __future__ import annotations

__all__ = ["DEFAULT_AUDIT_LIMIT", "DEFAULT_MAP", "MAPS"]

# --map: the projections tried in order for the embedding map (see classify.plots.project_2d).
# t-SNE separates classes as UMAP does, but takes about 20 s for the 2,000 points drawn on two
# cores; PCA is instant and shows only the directions of largest variance.
MAPS: dict[str, tuple[str, ...]] = {
    "auto": ("umap", "tsne"),
    "tsne": ("tsne",),
    "pca": ("pca",),
}
DEFAULT_MAP = "auto"

# --limit of an audit page: findings shown per section. At about 3 KB a thumbnail, 50 near
# pairs are 300 KB of page, and 50 groups of up to 6 copies at most 900 KB.
DEFAULT_AUDIT_LIMIT = 50
