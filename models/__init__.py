"""The model zoo: backbones from torchvision, timm, open_clip and local checkpoints, the
preprocessing and decoding their weights expect, the feature layer to cut at, and the
:class:`~headstart.models.embedder.Embedder` that runs one on a device.

Nothing here knows about collections, caches or jobs: the extraction job
(:mod:`headstart.extract`), the service, fine-tuning and text encoding build their model here.

Example:
    >>> from headstart.models import get_backbone, list_backbones  # doctest: +SKIP
    >>> backbone = get_backbone("resnet50")
"""

from typing import TYPE_CHECKING

from headstart.lazy import lazy_exports

# Names load on first use (PEP 562): importing the package must not import torch.
_EXPORTS = {
    "Backbone": "backbones",
    "BackboneWeights": "backbones",
    "WeightsUnavailable": "backbones",
    "get_backbone": "backbones",
    "list_backbones": "backbones",
    "Embedder": "embedder",
    "build_embedder": "embedder",
    "Preprocess": "preprocess",
    "PreprocessOverrides": "overrides",
}

if TYPE_CHECKING:
    from headstart.models.backbones import (
        Backbone,
        BackboneWeights,
        WeightsUnavailable,
        get_backbone,
        list_backbones,
    )
    from headstart.models.embedder import Embedder, build_embedder
    from headstart.models.overrides import PreprocessOverrides
    from headstart.models.preprocess import Preprocess


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "Backbone",
    "BackboneWeights",
    "Embedder",
    "Preprocess",
    "PreprocessOverrides",
    "WeightsUnavailable",
    "build_embedder",
    "get_backbone",
    "list_backbones",
]
