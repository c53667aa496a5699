import io
from pathlib import Path

import numpy as np
import pytest
from helpers import make_odd_images, write_image
from PIL import Image

from headstart.extract.decode import DecodeError, decode_image


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


def test_large_jpeg_is_decoded_at_reduced_size_but_never_below_min_side(tmp_path: Path) -> None:
    big = write_image(tmp_path / "big.jpg", 0, size=(2000, 1600))
    image = decode_image(big.read_bytes(), min_side=224)
    assert min(image.size) >= 224
    assert image.size == (500, 400)  # DCT scaling by 1/4


def test_grayscale_becomes_rgb() -> None:
    buffer = io.BytesIO()
    Image.new("L", (20, 20), 77).save(buffer, format="JPEG")
    image = decode_image(buffer.getvalue(), min_side=8)
    assert image.mode == "RGB" and np.asarray(image)[..., 0].mean() == pytest.approx(77, abs=2)
