"""Decode image bytes into upright RGB pixels, or say in one line why not.

JPEGs much larger than the model input are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
(PIL's ``draft``), which costs a fraction of a full decode. That reduction is a coarser filter than
the resize step's, so it is used only where the pixels the model sees stay within 1/255 (mean
absolute difference) of a full decode followed by the same resize: see :func:`_draft_scale`.

Every other plain JPEG (RGB or greyscale, upright) is decoded by libjpeg-turbo through
``torchvision.io.decode_jpeg`` straight into a tensor: per core it is 1.5-2.6 times Pillow's
decode-and-resize at 224-1600 px photos, with the same pixels (0.001/255 apart; measured by
``bench/decode_cpu.py``). Where draft applies Pillow is faster, so it keeps those; and it keeps
every awkward file (CMYK, EXIF-rotated, damaged, not a JPEG), whose handling and failure
reasons are Pillow's.

When JPEGs are decoded on the model's device (:mod:`~headstart.models.device_decode`), the
reading process only checks the header: :func:`jpeg_for_device` leaves a baseline JPEG encoded,
and everything else is decoded here as above.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DecodeError",
    "EncodedJpeg",
    "decode_image",
    "decode_pixels",
    "jpeg_for_device",
    "to_rgb",
]

_EXIF_ORIENTATION = 0x0112

# Transparent pixels are shown on white, as image viewers and product photos do.
_BACKGROUND = (255, 255, 255)

# How much larger than the resize target a DCT-reduced image must stay. Measured on photo
# mosaics and synthetic photos at 32-384 px inputs, against a full decode with the same resize,
# the worst image differs (mean absolute) by 1.8/255 when the reduced side is twice the target
# and by under 1/255 (0.88 on photos, 0.98 on synthetic colour noise) from 2.75 times on. Larger
# margins barely help: much of what remains is the reduced decode's 4:2:0 chroma, which the full
# decode interpolates instead. 2.75 keeps 2000x1500 photos at 224 px (2.93) on the fast path.
_MIN_REDUCTION_MARGIN = 2.75


class DecodeError(Exception):
    """The bytes are not a usable image; ``str(error)`` is the reason recorded in the ledger."""


@dataclass
class EncodedJpeg:
    """A JPEG left encoded for a batch decoder on the model's device: its bytes as a 1-D uint8
    tensor (pinned and shared between processes like pixels are) and its size from the header,
    which bounds the memory a batch decodes into."""

    data: torch.Tensor
    width: int
    height: int


def decode_image(data: bytes, min_side: int) -> Image.Image:
    """Decode ``data`` to RGB, EXIF orientation applied, shorter side still >= ``min_side``.

    Example:
        >>> decode_image(open("cat.jpg", "rb").read(), min_side=256).mode  # doctest: +SKIP
        'RGB'
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns about palette transparency and large images; both are handled below.
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise DecodeError(f"decompression bomb refused: {exc}") from None
        except UnidentifiedImageError:
            raise DecodeError("not an image Pillow can read (unknown or damaged header)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DecodeError(f"cannot read image header: {exc}") from None
        try:
            scale = _draft_scale(image.size, min_side)
            if scale > 1:
                image.draft(None, (image.width // scale, image.height // scale))
            image.load()
        except Image.DecompressionBombError as exc:
            raise DecodeError(f"decompression bomb refused: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise DecodeError(f"cannot decode {image.format or 'image'} data: {exc}") from None
        image = _upright(image)
        try:
            return to_rgb(image)
        except (OSError, ValueError) as exc:
            raise DecodeError(f"cannot convert mode {image.mode} to RGB: {exc}") from None


def decode_pixels(data: bytes, min_side: int) -> Image.Image | torch.Tensor:
    """Like :func:`decode_image`, but a plain JPEG comes back as a (3, H, W) uint8 tensor
    decoded by libjpeg-turbo; :func:`~headstart.models.preprocess.to_uint8_tensor` takes
    either.

    Example:
        >>> pixels = decode_pixels(open("cat.jpg", "rb").read(), min_side=256)  # doctest: +SKIP
    """
    if _plain_jpeg(data, min_side):
        try:
            return _decode_with_turbo(data)
        except (RuntimeError, ValueError, UserWarning):
            pass  # Pillow decodes it, or says why not, as it does for every other file
    return decode_image(data, min_side)


def _plain_jpeg(data: bytes, min_side: int) -> bool:
    """A JPEG that libjpeg-turbo decodes to the pixels Pillow would (RGB or greyscale, no
    rotation to apply) and that is not large enough for a DCT-reduced decode."""
    header = _upright_jpeg_header(data)
    return header is not None and _draft_scale(header.size, min_side) == 1


def jpeg_for_device(data: bytes) -> EncodedJpeg | None:
    """``data`` left encoded when a device decoder gives Pillow's pixels for it: a baseline
    JPEG, RGB or greyscale, upright, at any size (a full decode there costs less than a reduced
    one here). None for every other file, which :func:`decode_pixels` decodes: progressive and
    CMYK JPEGs, rotated ones, damaged headers, other formats."""
    header = _upright_jpeg_header(data)
    if header is None or header.info.get("progressive") or header.info.get("progression"):
        return None
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return EncodedJpeg(encoded, header.width, header.height)


def _upright_jpeg_header(data: bytes) -> Image.Image | None:
    """The header (only) of an RGB or greyscale JPEG with no rotation to apply; else None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            header = Image.open(io.BytesIO(data))  # reads the header only
            plain = (
                header.format == "JPEG"
                and header.mode in ("RGB", "L")
                and header.getexif().get(_EXIF_ORIENTATION, 1) == 1
            )
        except Exception:  # a damaged header: Pillow's path reports it
            return None
    return header if plain else None


def _decode_with_turbo(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; libjpeg's
        # own warnings (a truncated file) become errors, so such files go to Pillow.
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(encoded, mode=ImageReadMode.RGB)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16-bit scaled, alpha composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        sixteen_bit = image.mode.startswith("I;16")
        return Image.fromarray(_to_8bit(np.asarray(image), sixteen_bit)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _draft_scale(size: tuple[int, int], min_side: int) -> int:
    """The largest DCT reduction (8, 4, 2; 1 for none) that keeps the result true to a full decode.

    The scale must divide both sides: a reduced image is rounded up to whole pixels, so
    otherwise it covers a little more than the photo, its aspect ratio drifts and the resize
    lands up to a pixel off (5/255 on average for 500x375 photos at 32 px, 22/255 at worst).
    """
    width, height = size
    for scale in (8, 4, 2):
        exact = width % scale == 0 and height % scale == 0
        if exact and min(width, height) >= _MIN_REDUCTION_MARGIN * scale * min_side:
            return scale
    return 1


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        return image  # a damaged EXIF block must not cost the image itself


def _to_8bit(pixels: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    if pixels.dtype.kind == "f":
        peak = 1.0 if float(np.nanmax(pixels, initial=0.0)) <= 1.0 else 255.0
        scaled = np.nan_to_num(pixels) * (255.0 / peak)
        return np.clip(scaled, 0, 255).astype(np.uint8)
    # 16-bit samples (also when Pillow holds them in its 32-bit "I" mode): keep the top 8 bits.
    wide = pixels.astype(np.int64)
    shift = 8 if sixteen_bit or wide.max(initial=0) > 255 else 0
    return np.clip(wide >> shift, 0, 255).astype(np.uint8)
