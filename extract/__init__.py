"""Embedding extraction: a frozen backbone over image files, into the cache.

The pipeline's stages each have a module: :mod:`~headstart.extract.sources` (what to embed),
:mod:`~headstart.extract.plan` (what is missing), :mod:`~headstart.extract.reader` (read, hash,
decode), :mod:`~headstart.models.embedder` (forward pass), and the cache's writer;
:mod:`~headstart.extract.runner` connects them. :mod:`~headstart.extract.recipe` resolves a request
(or a fingerprint) into the model that runs.

Example:
    >>> from headstart.extract import ExtractOptions, extract  # doctest: +SKIP
    >>> summary = extract(["photos/"], ExtractOptions(model="resnet50"), ".headstart")
    >>> summary.fingerprint.id
    '6f1c0e2a9b3d4c5e'
"""

from typing import TYPE_CHECKING

from headstart.lazy import lazy_exports

# Names load on first use (PEP 562): `from headstart.extract import ExtractOptions` must not
# import torch, so that an unchanged rerun can finish without it.
_EXPORTS = {
    "PreprocessOverrides": "options",
    "ExtractOptions": "options",
    "ExtractSummary": "runner",
    "Recipe": "recipe",
    "extract": "runner",
    "options_for_fingerprint": "recipe",
    "recipe_for_fingerprint": "recipe",
    "resolve_recipe": "recipe",
    "ImageItem": "sources",
    "iter_images": "sources",
}

if TYPE_CHECKING:
    from headstart.extract.options import ExtractOptions, PreprocessOverrides
    from headstart.extract.recipe import (
        Recipe,
        options_for_fingerprint,
        recipe_for_fingerprint,
        resolve_recipe,
    )
    from headstart.extract.runner import ExtractSummary, extract
    from headstart.extract.sources import ImageItem, iter_images


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "ExtractOptions",
    "ExtractSummary",
    "ImageItem",
    "PreprocessOverrides",
    "Recipe",
    "extract",
    "iter_images",
    "options_for_fingerprint",
    "recipe_for_fingerprint",
    "resolve_recipe",
]
