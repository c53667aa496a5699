import pytest
import torch
from PIL import Image
from torchvision.models import ResNet50_Weights, ViT_B_16_Weights

from headstart.errors import HeadstartError
from headstart.models.preprocess import (
    DEFAULT_PREPROCESS,
    Preprocess,
    PreprocessOverrides,
    normalize,
    preprocess_from_timm,
    preprocess_from_torchvision,
    resolve_preprocess,
    to_uint8_tensor,
)


@pytest.mark.parametrize(
    "weights", [ResNet50_Weights.IMAGENET1K_V2, ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1]
)
def test_matches_the_weights_own_transforms_exactly(weights) -> None:
    image = Image.effect_mandelbrot((500, 380), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    preprocess = preprocess_from_torchvision(weights.transforms())

    ours = normalize(to_uint8_tensor(image, preprocess)[None], preprocess)[0]

    assert torch.equal(ours, weights.transforms()(image))


def test_resolution_order_explicit_then_weights_then_default() -> None:
    weights = preprocess_from_torchvision(ResNet50_Weights.IMAGENET1K_V2.transforms())
    assert resolve_preprocess(PreprocessOverrides(), weights) == weights
    assert resolve_preprocess(PreprocessOverrides(), None) == DEFAULT_PREPROCESS
    chosen = resolve_preprocess(
        PreprocessOverrides(resize_size=300, interpolation="bicubic"), weights
    )
    assert (chosen.resize_size, chosen.crop_size, chosen.interpolation) == (300, 224, "bicubic")
    # a crop alone keeps the weights' resize/crop ratio (232/224)
    assert resolve_preprocess(PreprocessOverrides(crop_size=112), weights).resize_size == 116


def test_timm_config_is_read() -> None:
    config = {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 0.9,
    }
    assert preprocess_from_timm(config) == Preprocess(248, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")


def test_round_trips_through_a_dict() -> None:
    assert Preprocess.from_dict(DEFAULT_PREPROCESS.to_dict()) == DEFAULT_PREPROCESS


@pytest.mark.parametrize(
    "kwargs",
    [{"resize_size": 10, "crop_size": 20}, {"interpolation": "lanczos9"}, {"std": (1.0, 0.0, 1.0)}],
)
def test_invalid_preprocessing_is_refused(kwargs) -> None:
    fields = DEFAULT_PREPROCESS.to_dict() | kwargs
    with pytest.raises(HeadstartError):
        Preprocess.from_dict(fields)
