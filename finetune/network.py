"""The network fine-tuning trains: the backbone's feature model and one Linear classifier.

The classifier starts as the linear head trained on the cache, with the head's standardisation
folded into it, so at step 0 the network answers exactly as the head does (LP-FT). A zero-shot
head (``--init zeroshot``) normalises each feature vector first, which no Linear layer can
fold: it becomes a :class:`NormalizedLinear` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.models.preprocess import Preprocess, normalize

__all__ = [
    "ClassifierNetwork",
    "NormalizedLinear",
    "UnfreezeSpec",
    "apply_unfreeze",
    "backbone_blocks",
    "fold_linear_head",
    "normalized_linear_head",
    "parameter_groups",
    "parse_unfreeze",
    "set_train_mode",
    "training_memory_format",
]


class ClassifierNetwork(nn.Module):
    """uint8 pixels -> normalised floats -> ``features`` -> ``classifier``."""

    def __init__(
        self,
        features: nn.Module,
        classifier: nn.Linear,
        preprocess: Preprocess,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.preprocess = preprocess
        self.memory_format = memory_format
        # Set by fold_batchnorm. Kept out of the module tree: it shares the parameters of
        # ``features`` and must not add a second set of names to the state dict.
        self.__dict__["_folded_features"] = None

    def fold_batchnorm(self) -> bool:
        """Train through a view of ``features`` with every BatchNorm now in inference mode
        folded into its convolution (see :mod:`headstart.finetune.fold`); True if any was."""
        from headstart.finetune.fold import fold_frozen_batchnorm
        from headstart.models.features import PooledFeatures

        features = self.features
        # The pooling step branches on the output's rank, which tracing cannot follow: fold
        # the body it wraps.
        body = features.body if isinstance(features, PooledFeatures) else features
        view = fold_frozen_batchnorm(body, lambda bn: not bn.training)
        if view is not None and isinstance(features, PooledFeatures):
            view = PooledFeatures(view, features.output_key)
        self.__dict__["_folded_features"] = view
        return view is not None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = normalize(pixels, self.preprocess).contiguous(memory_format=self.memory_format)
        folded = self.__dict__["_folded_features"]
        features = folded if self.training and folded is not None else self.features
        return self.classifier(features(images).float())


def training_memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """channels_last where convolution kernels are built for it (CUDA, and CPUs running bf16);
    plain NCHW for fp32 on CPU, where oneDNN's backward measured slower in channels_last
    (bench/finetune.py --also-channels-last)."""
    if device.type == "cuda" or precision != "fp32":
        return torch.channels_last
    return torch.contiguous_format


def fold_linear_head(head) -> nn.Linear:
    """A Linear layer computing ``head.class_scores`` on raw features.

    ``((x - mean) / scale) @ W.T + b == x @ (W / scale).T + (b - (W / scale) @ mean)``.
    """
    for attribute in ("coef_", "intercept_", "mean_", "scale_"):
        if not hasattr(head, attribute):
            raise HeadstartError(
                f"a {head.head_name} head has no linear layer to start from; "
                "fine-tuning starts from logreg, linear-svm or ridge (or --init zeroshot)"
            )
    weight = np.asarray(head.coef_, np.float64) / np.asarray(head.scale_, np.float64)
    bias = np.asarray(head.intercept_, np.float64) - weight @ np.asarray(head.mean_, np.float64)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    return layer


class NormalizedLinear(nn.Linear):
    """``normalise(x) @ W.T + b``: a Linear layer on L2-normalised features, the zero-shot
    head's scores (``W`` = logit scale times the class text embeddings)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(
            nn.functional.normalize(features, dim=-1, eps=1e-12), self.weight, self.bias
        )


def normalized_linear_head(head) -> NormalizedLinear:
    """A :class:`NormalizedLinear` computing a zero-shot head's ``class_scores``."""
    weight = torch.from_numpy(np.asarray(head.coef_, np.float32))
    layer = NormalizedLinear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.from_numpy(np.asarray(head.intercept_, np.float32)))
    return layer


@dataclass(frozen=True)
class UnfreezeSpec:
    """``all`` (every block), ``none`` (classifier only) or the last ``count`` blocks."""

    count: int | None  # None: all

    def __str__(self) -> str:
        return "all" if self.count is None else "none" if self.count == 0 else f"last:{self.count}"


def parse_unfreeze(text: str) -> UnfreezeSpec:
    if text == "all":
        return UnfreezeSpec(None)
    if text == "none":
        return UnfreezeSpec(0)
    name, _, number = text.partition(":")
    if name == "last" and number.isdigit():
        return UnfreezeSpec(int(number))
    raise HeadstartError(f"--unfreeze takes all, none or last:N, not {text!r}")


def backbone_blocks(features: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks in forward order, the unit ``last:N`` counts in.

    Wrappers with a single child that holds parameters are looked through, so a ResNet gives
    conv1, bn1, layer1 ... layer4 and a timm ConvNeXt its stem and stages.
    """
    prefix, module = "", features
    while True:
        children = [
            (name, child)
            for name, child in module.named_children()
            if any(True for _ in child.parameters())
        ]
        if len(children) != 1:
            break
        name, module = children[0]
        prefix = f"{prefix}{name}."
    blocks = [(f"{prefix}{name}", child) for name, child in children]
    return blocks or [(prefix.rstrip("."), module)]


def apply_unfreeze(network: ClassifierNetwork, spec: UnfreezeSpec) -> list[str]:
    """Set ``requires_grad`` per block; return the names of the trainable blocks."""
    blocks = backbone_blocks(network.features)
    count = len(blocks) if spec.count is None else min(spec.count, len(blocks))
    trainable = blocks[len(blocks) - count :] if count else []
    network.features.requires_grad_(False)
    for _, block in trainable:
        block.requires_grad_(True)
    network.classifier.requires_grad_(True)
    return [name for name, _ in trainable]


def set_train_mode(network: ClassifierNetwork, train_bn: bool) -> None:
    """Training mode, except BatchNorm (unless ``train_bn``) and frozen blocks, which stay in
    inference mode: their running statistics must not drift while their weights stay put."""
    network.train()
    for module in network.features.modules():
        frozen = not any(p.requires_grad for p in module.parameters(recurse=False))
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if is_norm and (not train_bn or frozen):
            module.eval()


def parameter_groups(
    network: ClassifierNetwork, lr: float, head_lr_mult: float, weight_decay: float
) -> list[dict]:
    """AdamW groups: backbone at ``lr``, classifier at ``lr * head_lr_mult``; biases and
    normalisation weights get no weight decay (decaying them only shrinks the scales)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for part, module in (("backbone", network.features), ("classifier", network.classifier)):
        for parameter in module.parameters():
            if parameter.requires_grad:
                groups.setdefault((part, parameter.ndim > 1), []).append(parameter)
    return [
        {
            "name": f"{part}{'' if decay else '-no-decay'}",
            "params": params,
            "lr": lr * (head_lr_mult if part == "classifier" else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (part, decay), params in groups.items()
    ]
