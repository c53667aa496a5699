"""torchvision classification models, with weights resolved through their ``WeightsEnum``."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import math
import os
from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from headstart.errors import HeadstartError, first_line
from headstart.models.backbones import (
    Backbone,
    BackboneWeights,
    WeightsUnavailable,
    random_weights,
    register_source,
    seeded,
)
from headstart.models.checkpoints import file_weights, is_weights_file
from headstart.models.preprocess import Preprocess, preprocess_from_torchvision

__all__ = ["TorchvisionSource"]


@register_source("torchvision")
class TorchvisionSource:
    """Every model in ``torchvision.models.list_models(module=torchvision.models)``."""

    def names(self) -> list[str]:
        return sorted(list_models(module=torchvision.models))

    def resolve(self, name: str, weights: str) -> Backbone:
        if name not in self.names():
            close = difflib.get_close_matches(name, self.names(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (see `headstart models`)"
            raise HeadstartError(f"unknown torchvision model {name!r}{hint}")
        enum = get_model_weights(name)
        build = seeded(partial(get_model, name, weights=None))
        if weights.lower() == "none":
            chosen = random_weights(_architecture_preprocess(name, enum))
        elif is_weights_file(weights):
            chosen = file_weights(weights, _architecture_preprocess(name, enum))
        else:
            member = _weights_member(enum, weights)
            chosen = BackboneWeights(
                identity=f"torchvision:{member}:{os.path.basename(member.url)}",
                origin=member.url,
                preprocess=preprocess_from_torchvision(member.transforms()),
                categories=tuple(member.meta.get("categories") or ()),
                ensure_available=partial(_ensure_available, member),
                availability_file=_checkpoint_path(member),
            )
            build = partial(_build_pretrained, name, member)
        return Backbone(name=f"torchvision:{name}", weights=chosen, build=build)


def _architecture_preprocess(name: str, enum) -> Preprocess:
    """The recipe of the architecture built without weights: the default weights' recipe, at the
    input size the architecture fixes when it fixes one (ViTs: vit_h_14's default weights are
    518 px, its weightless architecture 224 px)."""
    preprocess = preprocess_from_torchvision(enum.DEFAULT.transforms())
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            image_size = getattr(get_model(name, weights=None), "image_size", None)
    except (RuntimeError, NotImplementedError):
        return preprocess  # builders that compute on tensors (RegNet) cannot run on "meta"
    if isinstance(image_size, int) and image_size != preprocess.crop_size:
        ratio = preprocess.resize_size / preprocess.crop_size
        return dataclasses.replace(
            preprocess, crop_size=image_size, resize_size=math.floor(image_size * ratio)
        )
    return preprocess


def _weights_member(enum, spec: str):
    wanted = spec.split(".")[-1]
    if wanted == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[wanted]
    except KeyError:
        options = ", ".join(["DEFAULT", *[m.name for m in enum], "none", "PATH"])
        raise HeadstartError(
            f"unknown weights {spec!r} for {enum.__name__}; use one of {options}"
        ) from None


def _checkpoint_path(member) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(member.url))


def _ensure_available(member) -> None:
    if not os.path.isfile(_checkpoint_path(member)):
        _fetch(member)


def _fetch(member) -> dict[str, torch.Tensor]:
    """Download (or find in TORCH_HOME) and safely load the checkpoint of ``member``."""
    try:
        # torch.hub announces every download attempt on stdout, which is for results here.
        with contextlib.redirect_stdout(io.StringIO()):
            return member.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # urllib, socket, hash and unpickling errors all mean "not usable"
        reason = first_line(exc)
        raise WeightsUnavailable(
            f"cannot load {member} ({reason}); to use it offline, copy "
            f"{os.path.basename(member.url)} from {member.url} into "
            f"{os.path.dirname(_checkpoint_path(member))}, or pass --weights PATH"
        ) from None


def _build_pretrained(name: str, member) -> nn.Module:
    _fetch(member)  # refuses a checkpoint that would need unpickling arbitrary objects
    # The builder knows per-model details (class count, ViT image size); it reads the file the
    # fetch just verified from the torch hub cache.
    return get_model(name, weights=member)
