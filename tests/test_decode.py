import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_odd_images
from PIL import Image, ImageDraw
from torchvision import transforms

from headstart.models.decode import DecodeError, decode_image, decode_pixels
from headstart.models.preprocess import DEFAULT_PREPROCESS, to_uint8_tensor


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, tuple[Path, bool]]:
    return make_odd_images(tmp_path_factory.mktemp("odd"))


@pytest.mark.parametrize(
    "name",
    ["good", "16-bit-png", "cmyk-jpeg", "palette-alpha-png", "exif-rotated"],
)
def test_awkward_images_decode_to_rgb(odd, name: str) -> None:
    image = decode_image(odd[name][0].read_bytes(), min_side=16)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated", "truncated"),
        ("zero-byte", "empty file"),
        ("text-as-jpg", "not an image"),
        ("decompression-bomb", "decompression bomb"),
    ],
)
def test_broken_images_raise_with_a_reason(odd, name: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_image(odd[name][0].read_bytes(), min_side=16)


def test_exif_orientation_is_applied(odd) -> None:
    image = decode_image(odd["exif-rotated"][0].read_bytes(), min_side=16)
    assert image.size == (30, 60)


def test_sixteen_bit_keeps_its_range(odd) -> None:
    pixels = np.asarray(decode_image(odd["16-bit-png"][0].read_bytes(), min_side=16))
    assert pixels.max() >= 250 and pixels.min() <= 5  # scaled, not clipped to white


def test_transparency_is_composited_on_white(odd) -> None:
    pixels = np.asarray(decode_image(odd["palette-alpha-png"][0].read_bytes(), min_side=16))
    assert (pixels == 255).all()


@pytest.mark.parametrize(
    ("size", "min_side", "decoded"),
    [
        ((2000, 1600), 256, (1000, 800)),  # 1/4 would leave 400 px, too close to 256
        ((2000, 1600), 64, (250, 200)),
        ((2000, 1500), 36, (500, 375)),  # 1/8 does not divide 1500
        ((2002, 1502), 36, (1001, 751)),
        ((2001, 1500), 36, (2001, 1500)),  # no scale divides 2001: decoded in full
        ((640, 480), 256, (640, 480)),
    ],
    ids=lambda value: "x".join(map(str, value)) if isinstance(value, tuple) else str(value),
)
def test_large_jpeg_is_reduced_only_by_a_scale_that_divides_it_with_room_to_spare(
    size: tuple[int, int], min_side: int, decoded: tuple[int, int]
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue(), min_side=min_side).size == decoded


# (model input, photo size): photos several times the input, at sizes that take each DCT scale
# near its threshold, and sizes no scale divides (500x375, the commonest ImageNet shape).
_FIDELITY_CASES = [
    (32, (500, 375)),
    (32, (640, 480)),  # 1/4
    (32, (1056, 800)),  # 1/8
    (64, (1168, 880)),  # 1/4
    (224, (1800, 1416)),  # 1/2
    (224, (1600, 1200)),
    (384, (1600, 1200)),
]


@pytest.mark.parametrize(
    ("crop", "size"), _FIDELITY_CASES, ids=[f"{c}px-{w}x{h}" for c, (w, h) in _FIDELITY_CASES]
)
def test_reduced_decoding_stays_within_one_level_of_a_full_decode(
    crop: int, size: tuple[int, int]
) -> None:
    data = _photo_like(size, seed=crop)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    for interpolation in ("bilinear", "bicubic"):
        preprocess = dataclasses.replace(
            DEFAULT_PREPROCESS,
            resize_size=crop * DEFAULT_PREPROCESS.resize_size // DEFAULT_PREPROCESS.crop_size,
            crop_size=crop,
            interpolation=interpolation,
        )
        reference = transforms.Compose(
            [
                transforms.Resize(
                    preprocess.resize_size,
                    interpolation=transforms.InterpolationMode(interpolation),
                    antialias=True,
                ),
                transforms.CenterCrop(crop),
                transforms.PILToTensor(),
            ]
        )(full)
        # Both decoders: Pillow's (with DCT reduction where it applies), and libjpeg-turbo's
        # through torchvision where the extractor uses it (plain JPEGs too small to reduce).
        turbo_applies = isinstance(decode_pixels(data, preprocess.resize_size), torch.Tensor)
        assert turbo_applies == (decode_image(data, preprocess.resize_size).size == size)
        for decoded in (
            decode_image(data, min_side=preprocess.resize_size),
            decode_pixels(data, min_side=preprocess.resize_size),
        ):
            ours = to_uint8_tensor(decoded, preprocess)
            assert ours.shape == reference.shape
            difference = (ours.int() - reference.int()).abs().float().mean().item()
            assert difference <= 1.0, f"{interpolation}: mean |difference| {difference:.2f}/255"


@pytest.mark.parametrize("crop", [32, 64, 224, 384])
def test_plain_jpegs_decode_through_libjpeg_turbo_to_pillows_pixels(crop: int) -> None:
    data = _photo_like((500, 375), seed=crop)
    preprocess = dataclasses.replace(DEFAULT_PREPROCESS, resize_size=crop * 8 // 7, crop_size=crop)
    pixels = decode_pixels(data, min_side=preprocess.resize_size)
    assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8
    reference = np.asarray(decode_image(data, min_side=preprocess.resize_size))
    assert np.abs(pixels.permute(1, 2, 0).int().numpy() - reference).mean() < 1.0
    ours = to_uint8_tensor(pixels, preprocess)
    pillow = transforms.Compose(
        [
            transforms.Resize(preprocess.resize_size, antialias=True),
            transforms.CenterCrop(crop),
            transforms.PILToTensor(),
        ]
    )(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (ours.int() - pillow.int()).abs().float().mean().item() <= 1.0


@pytest.mark.parametrize("name", ["cmyk-jpeg", "exif-rotated", "16-bit-png", "good"])
def test_awkward_files_keep_pillows_decoder(odd, name: str) -> None:
    data = odd[name][0].read_bytes()
    decoded = decode_pixels(data, min_side=16)
    expected = decode_image(data, min_side=16)
    if isinstance(decoded, torch.Tensor):  # only a plain JPEG may take libjpeg-turbo's path
        assert name == "good" and data.startswith(b"\xff\xd8")
        decoded = Image.fromarray(decoded.permute(1, 2, 0).numpy())
    assert decoded.mode == "RGB" and decoded.size == expected.size
    assert np.abs(np.asarray(decoded, np.int16) - np.asarray(expected, np.int16)).mean() < 1.0


def test_a_damaged_jpeg_fails_with_pillows_reason() -> None:
    data = _photo_like((500, 375), seed=1)
    with pytest.raises(DecodeError) as through_turbo:
        decode_pixels(data[: len(data) // 2], min_side=32)
    with pytest.raises(DecodeError) as through_pillow:
        decode_image(data[: len(data) // 2], min_side=32)
    assert str(through_turbo.value) == str(through_pillow.value)


def test_grayscale_becomes_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("L", (20, 20), 77).save(buffer, format="JPEG")
    image = decode_image(buffer.getvalue(), min_side=8)
    assert image.mode == "RGB" and np.asarray(image)[..., 0].mean() == pytest.approx(77, abs=2)


def _photo_like(size: tuple[int, int], seed: int) -> bytes:
    """A JPEG with what makes resampling hard in photos: detail at every scale, sharp edges."""
    width, height = size
    rng = np.random.default_rng(seed)
    # Texture whose amplitude falls with frequency, as in natural images, down to sensor noise.
    pixels = np.full((height, width, 3), 128.0, dtype=np.float32)
    for cell, amplitude in ((256, 60), (64, 30), (16, 16), (4, 10)):
        grid = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
        layer = Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)
        pixels += (np.asarray(layer, dtype=np.float32) - 127.5) * (amplitude / 127.5)
    pixels += 6.0 * rng.standard_normal(pixels.shape, dtype=np.float32)
    # Objects with sharp outlines and thin lines (wires, hair), as many per area at every size.
    shapes = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(shapes)
    count = max(4, width * height // 15_000)
    for _ in range(count):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.02, 0.2) * min(width, height)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r), fill=fill)
    for _ in range(count):
        ends = tuple(rng.uniform(0, 1, 4) * (width, height, width, height))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line(ends, fill=fill, width=int(rng.integers(1, 4)))
    pixels += np.asarray(shapes, dtype=np.float32) - 128
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
