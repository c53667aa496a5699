"""Embedding extraction: a frozen backbone over image files, into the cache.

The pipeline's stages each have a module: :mod:`~headstart.extract.sources` (what to embed),
:mod:`~headstart.extract.plan` (what is missing), :mod:`~headstart.extract.reader` (read, hash,
decode), :mod:`~headstart.extract.mapper` (forward pass), and the cache's writer;
:mod:`~headstart.extract.runner` connects them.

Example:
    >>> from headstart.extract import ExtractOptions, extract  # doctest: +SKIP
    >>> summary = extract(["photos/"], ExtractOptions(model="resnet50"), ".headstart")
    >>> summary.fingerprint.id
    '6f1c0e2a9b3d4c5e'
"""

from headstart.extract.backbones import (
    Backbone,
    BackboneWeights,
    WeightsUnavailable,
    get_backbone,
    list_backbones,
)
from headstart.extract.preprocess import Preprocess, PreprocessOverrides
from headstart.extract.runner import (
    ExtractOptions,
    ExtractSummary,
    Recipe,
    extract,
    options_for_fingerprint,
    resolve_recipe,
)
from headstart.extract.sources import ImageItem, iter_images

__all__ = [
    "Backbone",
    "BackboneWeights",
    "ExtractOptions",
    "ExtractSummary",
    "ImageItem",
    "Preprocess",
    "PreprocessOverrides",
    "Recipe",
    "WeightsUnavailable",
    "extract",
    "get_backbone",
    "iter_images",
    "list_backbones",
    "options_for_fingerprint",
    "resolve_recipe",
]
