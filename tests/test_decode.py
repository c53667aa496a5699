import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_odd_images, photo_like_jpeg
from PIL import Image
from torchvision import transforms

from headstart.models.decode import DecodeError, decode_image, decode_pixels, jpeg_for_device
from headstart.models.device_decode import DeviceJpegDecoder, device_decoding_works
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
    data = photo_like_jpeg(size, seed=crop)
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
    data = photo_like_jpeg((500, 375), seed=crop)
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
    data = photo_like_jpeg((500, 375), seed=1)
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


# The device decoder: the same code as on CUDA (torchvision's batched decode_jpeg, a float32
# resize), run here on CPU tensors, where decode_jpeg is libjpeg-turbo.
def _pillow_reference(data: bytes, preprocess) -> torch.Tensor:
    resize = transforms.Resize(
        preprocess.resize_size,
        interpolation=transforms.InterpolationMode(preprocess.interpolation),
        antialias=True,
    )
    pipeline = transforms.Compose(
        [resize, transforms.CenterCrop(preprocess.crop_size), transforms.PILToTensor()]
    )
    return pipeline(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("crop", [32, 64, 224, 384])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_device_decoder_stays_within_one_level_of_pillow(crop: int, interpolation: str) -> None:
    sizes = [(500, 375), (375, 500), (1024, 683), (640, 480), (500, 375)]  # one size twice
    jpegs = [photo_like_jpeg(size, seed=crop + i) for i, size in enumerate(sizes)]
    preprocess = dataclasses.replace(
        DEFAULT_PREPROCESS,
        resize_size=crop * 8 // 7,
        crop_size=crop,
        interpolation=interpolation,
    )
    decoded = DeviceJpegDecoder(preprocess, torch.device("cpu"))(
        [jpeg_for_device(data) for data in jpegs]
    )
    for data, pixels in zip(jpegs, decoded, strict=True):
        reference = _pillow_reference(data, preprocess)
        assert pixels.dtype == torch.uint8 and pixels.shape == reference.shape
        difference = (pixels.int() - reference.int()).abs().float().mean().item()
        assert difference <= 1.0, f"mean |difference| {difference:.2f}/255"


def test_a_damaged_jpeg_costs_only_itself_in_a_device_batch() -> None:
    good = photo_like_jpeg((320, 240), seed=3)
    jpegs = [jpeg_for_device(good), jpeg_for_device(good[: len(good) // 2]), jpeg_for_device(good)]
    decoded = DeviceJpegDecoder(DEFAULT_PREPROCESS, torch.device("cpu"))(jpegs)
    assert isinstance(decoded[0], torch.Tensor) and isinstance(decoded[2], torch.Tensor)
    assert torch.equal(decoded[0], decoded[2])
    assert isinstance(decoded[1], str) and "truncated" in decoded[1]
    assert ".cpp" not in decoded[1]  # the reason, not torchvision's source line


@pytest.mark.parametrize(
    "name", ["cmyk-jpeg", "exif-rotated", "16-bit-png", "palette-alpha-png", "progressive"]
)
def test_awkward_files_stay_with_the_cpu_decoder(odd, tmp_path: Path, name: str) -> None:
    if name == "progressive":
        path = tmp_path / "progressive.jpg"
        Image.open(io.BytesIO(photo_like_jpeg((200, 150), seed=5))).save(path, progressive=True)
    else:
        path = odd[name][0]
    assert jpeg_for_device(path.read_bytes()) is None


def test_plain_jpegs_of_any_size_go_to_the_device() -> None:
    buffer = io.BytesIO()
    Image.new("L", (3000, 2000), 90).save(buffer, format="JPEG")
    for data, size in [
        (photo_like_jpeg((64, 48), seed=1), (64, 48)),
        (buffer.getvalue(), (3000, 2000)),
    ]:
        jpeg = jpeg_for_device(data)
        assert jpeg is not None and (jpeg.width, jpeg.height) == size
        assert jpeg.data.dtype == torch.uint8 and jpeg.data.numpy().tobytes() == data


def test_device_decoding_works_on_the_cpu() -> None:
    assert device_decoding_works(torch.device("cpu")) is None
