"""From a backbone to one vector per image: the embedding contract shared by every model.

By default the vector is the pre-logits one: the input of a torchvision classifier's last Linear
layer, timm's ``num_classes=0`` output, an open_clip model's image feature (``encode_image``), or
the input of a local model's final classifier (its own output when it has none; see
:mod:`.classifier`). ``layer`` picks any node
``torchvision.models.feature_extraction`` accepts instead. Outputs with more than two dimensions
are average-pooled: (N, C, H, W) over H and W, (N, tokens, C) over tokens.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.models.backbones import Backbone
from headstart.models.checkpoints import apply_checkpoint
from headstart.models.classifier import (
    NO_CLASSIFIER,
    cut_classifier,
    describe_classifier,
    find_classifier,
)
from headstart.models.preprocess import DEFAULT_PREPROCESS

__all__ = [
    "POOLING",
    "FeatureModel",
    "build_feature_model",
    "classifier_summary",
    "layer_names",
    "pool",
    "with_classifier",
]

POOLING = "avg"


def pool(features: torch.Tensor) -> torch.Tensor:
    """Average a feature map or token sequence to one vector per image."""
    if features.ndim == 2:
        return features
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    return features.flatten(1)


class PooledFeatures(nn.Module):
    """Runs ``body`` and pools its output (or the ``output_key`` entry of a dict output)."""

    def __init__(self, body: nn.Module, output_key: str | None = None) -> None:
        super().__init__()
        self.body = body
        self.output_key = output_key

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.body(images)
        if self.output_key is not None:
            out = out[self.output_key]
        if isinstance(out, (tuple, list)):
            out = out[0]  # local models that return (embedding, extras...)
        return pool(out)


@dataclass(frozen=True)
class FeatureModel:
    """The module that maps normalised images to vectors, and the width its metadata promises."""

    module: nn.Module
    expected_dim: int | None


def build_feature_model(backbone: Backbone, layer: str | None = None) -> FeatureModel:
    """Build the backbone (loading its weights) and cut it at the embedding."""
    model = backbone.build()
    ignored: list[str] = []
    expected_dim: int | None = None
    if backbone.head_rule == "last-linear":
        name, expected_dim = _cut_classifier(model, backbone.name, layer is None)
        if name:
            ignored.append(f"{name}.")
    elif backbone.head_rule == "find-classifier" and layer is None:
        name = backbone.classifier or _found_classifier(model, backbone)
        if name != NO_CLASSIFIER:
            cut = cut_classifier(model, name, backbone.name)
            model, expected_dim = cut.model, cut.in_features
            ignored.append(f"{name}.")
    elif backbone.family == "timm":
        from headstart.models._timm import classifier_prefixes

        ignored.extend(classifier_prefixes(model))
        expected_dim = int(getattr(model, "num_features", 0)) or None
    elif backbone.family == "open_clip":
        from headstart.models._open_clip import text_prefixes

        ignored.extend(text_prefixes(model))  # a whole-model checkpoint holds the text tower
        expected_dim = int(getattr(model, "num_features", 0)) or None
    if backbone.weights.checkpoint is not None:
        apply_checkpoint(model, backbone.weights.checkpoint, ignored)
    model.eval()
    if layer is None:
        return FeatureModel(PooledFeatures(model), expected_dim)
    return FeatureModel(PooledFeatures(_node_extractor(model, layer, backbone), "features"), None)


def with_classifier(backbone: Backbone, requested: str | None, crop_size: int) -> Backbone:
    """``backbone`` with its final classifier found (``requested`` None), or the one named
    checked (``none``: keep the network's output). Builds the network to look, once."""
    if backbone.head_rule != "find-classifier":
        if requested is not None:
            raise HeadstartError(
                f"--classifier is for your own networks (file.py:factory, TorchScript); "
                f"{backbone.name} is cut at its classifier already (--layer picks another node)"
            )
        return backbone
    if requested == NO_CLASSIFIER:
        return replace(backbone, classifier=NO_CLASSIFIER)
    model = backbone.build()
    if requested is None:
        return replace(backbone, classifier=find_classifier(model, crop_size) or NO_CLASSIFIER)
    cut_classifier(model, requested, backbone.name)  # says so now if it cannot be cut
    return replace(backbone, classifier=requested)


def _found_classifier(model: nn.Module, backbone: Backbone) -> str:
    preprocess = backbone.weights.preprocess or DEFAULT_PREPROCESS
    return find_classifier(model, preprocess.crop_size) or NO_CLASSIFIER


def classifier_summary(backbone: Backbone, requested: str | None, crop_size: int | None) -> str:
    """One line saying which module is cut off to reach the embedding, and why."""
    crop = crop_size or (backbone.weights.preprocess or DEFAULT_PREPROCESS).crop_size
    if backbone.family == "open_clip":
        return "classifier: none; embeddings are the image tower's output (encode_image)"
    if backbone.head_rule == "as-is":
        return f"classifier: removed by {backbone.family} itself; embeddings are its output"
    resolved = with_classifier(backbone, requested, crop)
    model = backbone.build()
    if backbone.head_rule == "last-linear":
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            return f"classifier: none found in {backbone.name}; choose a node with --layer"
        return f"classifier: {describe_classifier(model, linears[-1])}, its last Linear layer"
    if resolved.classifier == NO_CLASSIFIER:
        why = "as asked" if requested else "none found"
        return (
            f"classifier: {why}; embeddings are the network's output (pooled if a feature map)"
            "; --classifier NAME cuts one"
        )
    how = "named by --classifier" if requested else "found"
    found = describe_classifier(model, resolved.classifier)
    return f"classifier: {found}, {how}; cut off, embeddings are its input"


def layer_names(backbone: Backbone) -> list[str]:
    """Node names ``--layer`` accepts for this backbone (evaluation graph)."""
    model = backbone.build().eval()
    if isinstance(model, torch.jit.ScriptModule):
        raise HeadstartError(
            "TorchScript models cannot be cut at a layer; export the part you want"
        )
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(model)[1]


def _node_extractor(model: nn.Module, layer: str, backbone: Backbone) -> nn.Module:
    if isinstance(model, torch.jit.ScriptModule):
        raise HeadstartError(
            "TorchScript models cannot be cut at a layer; export the part you want"
        )
    if backbone.family == "timm":
        from timm.models._features_fx import create_feature_extractor
    else:
        from torchvision.models.feature_extraction import create_feature_extractor
    try:
        return create_feature_extractor(model, return_nodes={layer: "features"})
    except ValueError:
        from torchvision.models.feature_extraction import get_graph_node_names

        names = get_graph_node_names(model)[1]
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise HeadstartError(
            f"no node {layer!r} in {backbone.name}; {hint}`headstart layers {backbone.name}` "
            "lists them"
        ) from None


def _cut_classifier(model: nn.Module, model_name: str, required: bool) -> tuple[str, int | None]:
    """Remove the classifier; return its name and the width of what fed it."""
    last_linear = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = (name, module)
    if last_linear is not None:
        _replace_module(model, last_linear[0], nn.Identity())
        return last_linear[0], last_linear[1].in_features
    # SqueezeNet classifies with a 1x1 convolution: pooling the features it reads is the same cut.
    classifier = getattr(model, "classifier", None)
    convs = [m for m in classifier.modules() if isinstance(m, nn.Conv2d)] if classifier else []
    if convs:
        model.classifier = nn.AdaptiveAvgPool2d(1)
        return "classifier", convs[-1].in_channels
    if required:
        raise HeadstartError(
            f"{model_name} has no classifier layer to cut at; choose a node with --layer "
            f"(`headstart layers {model_name}` lists them)"
        )
    return "", None


def _replace_module(model: nn.Module, dotted: str, replacement: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)
