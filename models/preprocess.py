"""Preprocessing: one record per weights, resolved in one documented place.

Resolution order (:func:`resolve_preprocess`): options the user gave explicitly, then the config
that comes with the weights (torchvision's ``weights.transforms()``, timm's data config,
open_clip's preprocess config), then :data:`DEFAULT_PREPROCESS`. The result is written into
the fingerprint, so vectors made with different preprocessing never mix.

Decoding workers run :func:`to_uint8_tensor` (resize and crop of the decoded pixels, as
``ImageClassification`` does, or as open_clip's ``squash`` and ``longest`` modes do); the
model's process runs :func:`normalize` (inside the compiled graph when there is one), so only
uint8 pixels cross process boundaries and the host-to-GPU copy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.v2 import functional as F2

from headstart.errors import HeadstartError
from headstart.models.overrides import PreprocessOverrides

__all__ = [
    "DEFAULT_PREPROCESS",
    "RESIZE_MODES",
    "Preprocess",
    "PreprocessOverrides",
    "normalize",
    "preprocess_from_timm",
    "preprocess_from_torchvision",
    "resize_and_crop_float",
    "resolve_preprocess",
    "to_uint8_tensor",
]

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
# How the image is brought to the resize size (open_clip's names): the shorter side to it (then
# a centre crop, the ImageNet recipe), the whole image to a square of it ignoring the aspect
# ratio, or the longer side to it (the rest padded with black by the crop).
RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size``, normalise.

    ``resize_mode`` ``squash`` resizes the image to ``resize_size`` x ``resize_size`` instead,
    ``longest`` its longer side to ``resize_size`` (the crop then pads with black).
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise HeadstartError(
                f"unknown interpolation {self.interpolation!r}; "
                f"use one of {sorted(_INTERPOLATIONS)}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise HeadstartError(
                f"unknown resize mode {self.resize_mode!r}; use one of {list(RESIZE_MODES)}"
            )
        if self.crop_size < 1 or self.resize_size < self.crop_size:
            raise HeadstartError(
                f"resize {self.resize_size} must be at least the crop {self.crop_size}, "
                "and both positive"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise HeadstartError("mean and std need three values each, std all positive")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self) | {"mean": list(self.mean), "std": list(self.std)}
        if self.resize_mode == "shortest":
            # Recorded only when it is not the default, so fingerprints made before the field
            # existed keep their ids.
            del data["resize_mode"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(
            resize_size=int(data["resize_size"]),
            crop_size=int(data["crop_size"]),
            mean=_triple(data["mean"]),
            std=_triple(data["std"]),
            interpolation=str(data["interpolation"]),
            resize_mode=str(data.get("resize_mode", "shortest")),
        )


# For backbones whose weights carry no config (TorchScript files, user factories, random init of
# a model without published weights): the ImageNet evaluation recipe most backbones were made with.
DEFAULT_PREPROCESS = Preprocess(
    resize_size=256,
    crop_size=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)


def resolve_preprocess(
    overrides: PreprocessOverrides, weights_config: Preprocess | None
) -> Preprocess:
    """Explicit options, then the weights' config, then :data:`DEFAULT_PREPROCESS`.

    A crop given without a resize keeps the base config's resize-to-crop ratio.

    Example:
        >>> resolve_preprocess(PreprocessOverrides(crop_size=112), None).resize_size
        128
    """
    base = weights_config or DEFAULT_PREPROCESS
    crop = overrides.crop_size or base.crop_size
    if overrides.resize_size is not None:
        resize = overrides.resize_size
    elif overrides.crop_size is not None:
        resize = math.floor(crop * base.resize_size / base.crop_size)
    else:
        resize = base.resize_size
    return Preprocess(
        resize_size=resize,
        crop_size=crop,
        mean=overrides.mean or base.mean,
        std=overrides.std or base.std,
        interpolation=overrides.interpolation or base.interpolation,
        resize_mode=overrides.resize_mode or base.resize_mode,
    )


def preprocess_from_torchvision(transforms: Any) -> Preprocess:
    """Read torchvision's ``ImageClassification`` preset (``weights.transforms()``)."""
    interpolation = transforms.interpolation
    name = next((k for k, v in _INTERPOLATIONS.items() if v == interpolation), None)
    if name is None:
        raise HeadstartError(f"unsupported interpolation in weights preset: {interpolation}")
    return Preprocess(
        resize_size=int(transforms.resize_size[0]),
        crop_size=int(transforms.crop_size[0]),
        mean=_triple(transforms.mean),
        std=_triple(transforms.std),
        interpolation=name,
    )


def preprocess_from_timm(data_config: dict[str, Any]) -> Preprocess:
    """Read timm's ``resolve_data_config`` output (crop = input size, resize = crop / crop_pct)."""
    crop = int(data_config["input_size"][-1])
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    interpolation = str(data_config.get("interpolation") or "bilinear")
    if interpolation not in _INTERPOLATIONS:
        interpolation = "bicubic"  # timm's "random" etc. are training-time choices
    return Preprocess(
        resize_size=math.floor(crop / crop_pct),
        crop_size=crop,
        mean=_triple(data_config["mean"]),
        std=_triple(data_config["std"]),
        interpolation=interpolation,
    )


def to_uint8_tensor(image: Image.Image | torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Resize and crop an RGB image (PIL, or a (3, H, W) uint8 tensor from libjpeg-turbo) the way
    ``ImageClassification`` does (open_clip's transforms for ``squash`` and ``longest``);
    (3, H, W) uint8.

    A PIL image is resized by Pillow, exactly as the weights' own transforms do; a tensor by
    torch's uint8 kernels (transforms.v2: vectorised, without v1's round trip through
    float32), within 0.01/255 of Pillow's pixels (``bench/decode_cpu.py``).
    """
    if isinstance(image, torch.Tensor):
        height, width = image.shape[-2:]
        functional = F2
    else:
        width, height = image.size
        functional = F
    image = functional.resize(
        image,
        _resized_shape(width, height, preprocess),
        interpolation=_INTERPOLATIONS[preprocess.interpolation],
        antialias=True,
    )
    image = functional.center_crop(image, [preprocess.crop_size])  # pads with black if small
    return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)


def resize_and_crop_float(image: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """:func:`to_uint8_tensor` for a (3, H, W) uint8 tensor, or (N, 3, H, W) images of one
    size, on any device, resized in float32 and rounded back: torch's antialiased uint8
    kernels exist on the CPU only, so this is the arithmetic a GPU runs, and the same code on
    the CPU is what tests check it by."""
    height, width = image.shape[-2:]
    resized = F2.resize(
        image.float(),
        _resized_shape(width, height, preprocess),
        interpolation=_INTERPOLATIONS[preprocess.interpolation],
        antialias=True,
    )
    pixels = resized.round_().clamp_(0, 255).to(torch.uint8)
    return F2.center_crop(pixels, [preprocess.crop_size])


def _resized_shape(width: int, height: int, preprocess: Preprocess) -> list[int]:
    """The size argument of ``resize``: the shorter side, a square, or the longer side."""
    side = preprocess.resize_size
    if preprocess.resize_mode == "squash":
        return [side, side]
    if preprocess.resize_mode == "longest":
        scale = max(width, height) / side
        return [max(1, round(height / scale)), max(1, round(width / scale))]
    return [side]


def normalize(pixels: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] and normalised with the weights' mean/std."""
    scaled = F.convert_image_dtype(pixels, torch.float)
    return F.normalize(scaled, mean=list(preprocess.mean), std=list(preprocess.std))


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise HeadstartError(f"expected three values (one per RGB channel), got {list(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))
