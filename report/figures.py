"""The pictures of a report, as bytes ready to inline: PNG plots and JPEG thumbnails.

Plots come from :mod:`headstart.classify.plots` (the same ones ``train --plot`` and
``finetune`` write as files), thumbnails from :mod:`headstart.search.thumbnails`, and only
for the images the gallery shows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from headstart.classify.plots import plot_confusion, plot_embedding_map, plot_learning_curve
from headstart.report.gather import ReportData
from headstart.report.settings import DEFAULT_MAP, MAPS
from headstart.search.thumbnails import thumbnail_of_file

__all__ = ["MAX_TABLE_CLASSES", "Figures", "draw"]

# Up to this many classes the confusion matrix is an HTML table with a number in every cell;
# beyond it the cells are too small to read, and a picture (plus the most confused pairs) is
# shown instead, which also keeps the page from growing with the square of the classes.
MAX_TABLE_CLASSES = 30
_MIN_MAP_POINTS = 3  # a projection of fewer points says nothing


@dataclass
class Figures:
    learning_curve: bytes | None = None  # PNG
    confusion: bytes | None = None  # PNG, only past MAX_TABLE_CLASSES
    embedding_map: bytes | None = None  # PNG
    thumbnails: list[bytes | None] = field(default_factory=list)  # JPEG per mistake, in order


def draw(data: ReportData, *, projection: str = DEFAULT_MAP) -> Figures:
    """Every picture ``data`` calls for, the map projected as ``projection`` (a key of
    ``MAPS``) says; an image that cannot be read has no thumbnail."""
    figures = Figures()
    if data.history:
        figures.learning_curve = _png(lambda out: plot_learning_curve(data.history, out))
    evaluated = data.evaluated
    if evaluated is None:
        return figures
    if len(evaluated.classes) > MAX_TABLE_CLASSES:
        names = np.asarray(evaluated.classes)
        # The matrix is already counted: expand it back into one (true, predicted) pair per
        # count, which plot_confusion tallies again at the same size.
        true, predicted = np.nonzero(evaluated.confusion)
        repeats = evaluated.confusion[true, predicted]
        figures.confusion = _png(
            lambda out: plot_confusion(
                np.repeat(names[true], repeats),
                np.repeat(names[predicted], repeats),
                names,
                out,
                title="accuracy",
            )
        )
    if len(evaluated.map_vectors) >= _MIN_MAP_POINTS:
        figures.embedding_map = _png(
            lambda out: plot_embedding_map(
                evaluated.map_vectors,
                evaluated.map_labels,
                out,
                max_points=len(evaluated.map_vectors),
                methods=MAPS[projection],
            )
        )
    figures.thumbnails = [thumbnail_of_file(mistake.path) for mistake in evaluated.mistakes]
    return figures


def _png(plot) -> bytes:
    buffer = io.BytesIO()
    plot(buffer)
    return buffer.getvalue()
