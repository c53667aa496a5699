"""Batches of JPEGs decoded, resized and cropped on the model's device.

Decoding with Pillow in worker processes cannot feed a modern GPU: on an H200, resnet50 ran end
to end at 36% of its model-only rate, waiting on decode. Here the workers only read, hash and
check headers (:func:`~headstart.models.decode.jpeg_for_device`), and a batch's JPEGs are
decoded together where the model runs.

Why torchvision's ``decode_jpeg``: on CUDA it is nvJPEG's batched decoder, shipped in the
torchvision wheel already pinned (no CUDA-version-specific wheel to match, as nvImageCodec's and
DALI's are), it takes the same tensors on the CPU, where it is libjpeg-turbo, so the code below
runs and is tested on every machine, and it fails with a message per image. TorchCodec 0.16 is
its announced successor with the same call; ``bench/gpu_check.py`` times this decoder on a lent
GPU, and nvImageCodec beside it where that is installed, so the choice is remade by measurement.

Pixels: a full decode, then an antialiased resize in float32 and a centre crop, as
:func:`~headstart.models.preprocess.resize_and_crop_float` does on any device; on the CPU that is
within a mean of 1/255 of torchvision's PIL reference at 32-384 px (``tests/test_device_decode``),
and ``bench/gpu_check.py`` checks the CUDA decoder against the same bound.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence

import torch

from headstart.errors import first_line
from headstart.models.decode import EncodedJpeg
from headstart.models.preprocess import Preprocess, resize_and_crop_float

__all__ = ["DeviceJpegDecoder", "decode_jpegs", "device_decoding_works"]

# Decoded pixels one call may hold on the device before resizing (uint8, 3 channels): 64
# megapixels, 192 MB, about 5 photos of 12 MP or 1,300 of 224 px. Bounds the memory a batch of
# large photos takes without splitting batches of ordinary ones.
_PIXELS_PER_CALL = 64 * 2**20

# torchvision prefixes its errors with the C++ function and source line: not for the ledger.
_SOURCE_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


class DeviceJpegDecoder:
    """Decodes :class:`EncodedJpeg` batches on ``device`` into the model's uint8 input.

    Example:
        >>> decoder = DeviceJpegDecoder(preprocess, torch.device("cuda"))  # doctest: +SKIP
        >>> results = decoder(jpegs)  # (3, crop, crop) uint8 tensors, or failure reasons
    """

    def __init__(self, preprocess: Preprocess, device: torch.device) -> None:
        self.preprocess = preprocess
        self.device = device

    def __call__(self, jpegs: Sequence[EncodedJpeg]) -> list[torch.Tensor | str]:
        """Each JPEG as (3, crop, crop) uint8 pixels on the device, or why it did not decode.
        One damaged file costs only itself: a failed call is retried image by image."""
        results: list[torch.Tensor | str] = []
        for group in _groups(jpegs, _PIXELS_PER_CALL):
            try:
                encoded = [jpeg.data for jpeg in group]
                images: list[torch.Tensor | str] = list(decode_jpegs(encoded, self.device))
            except (RuntimeError, ValueError, UserWarning):
                images = [self._decode_one(jpeg.data) for jpeg in group]
            results.extend(self._resize_and_crop(images))
        return results

    def _resize_and_crop(self, images: list[torch.Tensor | str]) -> list[torch.Tensor | str]:
        """Images of one size are resized as one tensor: a resize per image would cost more in
        kernel launches than in arithmetic on a GPU, and collections are mostly a few sizes."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if not isinstance(image, str):
                by_size.setdefault(tuple(image.shape), []).append(i)
        out = list(images)
        for positions in by_size.values():
            resized = resize_and_crop_float(
                torch.stack([images[i] for i in positions]), self.preprocess
            )
            for i, pixels in zip(positions, resized, strict=True):
                out[i] = pixels
        return out

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | str:
        try:
            return decode_jpegs([data], self.device)[0]
        except (RuntimeError, ValueError, UserWarning) as exc:
            reason = _SOURCE_LOCATION.sub("", first_line(exc))
            return f"cannot decode JPEG data on {self.device.type}: {reason}"


def device_decoding_works(device: torch.device) -> str | None:
    """None when JPEGs decode on ``device``; otherwise why not, in one line (a torchvision
    built without nvJPEG, a driver that refuses it)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buffer, format="JPEG")
    encoded = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        decoded = decode_jpegs([encoded], device)[0]
    except Exception as exc:  # whatever the library raises: the CPU workers decode instead
        return first_line(exc)
    return None if decoded.shape == (3, 16, 16) else f"decoded to shape {tuple(decoded.shape)}"


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes (1-D uint8 CPU tensors) as (3, H, W) uint8 RGB on ``device``, in one call
    (nvJPEG's batched decode on CUDA); raises if any of them fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # libjpeg's warnings (a truncated file) are errors, as on the CPU path; torchvision
        # 0.29 marks its decoders deprecated in favour of TorchCodec.
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def _groups(jpegs: Sequence[EncodedJpeg], pixels_per_call: int) -> Iterator[list[EncodedJpeg]]:
    """Consecutive runs of JPEGs whose decoded pixels stay within the bound (at least one)."""
    group: list[EncodedJpeg] = []
    pixels = 0
    for jpeg in jpegs:
        size = jpeg.width * jpeg.height
        if group and pixels + size > pixels_per_call:
            yield group
            group, pixels = [], 0
        group.append(jpeg)
        pixels += size
    if group:
        yield group
