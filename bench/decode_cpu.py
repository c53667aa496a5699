"""CPU decoding per core: Pillow (with DCT draft) against libjpeg-turbo through torchvision.

For each photo size the benchmark makes JPEGs from the real photos of imagenette-mini (mosaics
of them for the large sizes), then turns each into the model's input the ways the extractor
could, on one thread, and prints images per second per core and the pixel difference from the
reference (Pillow decode and resize, as torchvision's ``ImageClassification`` does):

* ``pillow``: the baseline, what the extractor did before: Pillow decodes (DCT-reduced where
  that keeps parity), Pillow resizes, then crop and to tensor;
* ``turbo``: ``torchvision.io.decode_jpeg`` (libjpeg-turbo, no DCT reduction) for every JPEG,
  torch resizes the uint8 tensor;
* ``headstart``: what the extractor does now (``decode_pixels``): turbo for plain JPEGs that
  no DCT reduction applies to, Pillow for the rest.

Methods run interleaved, round after round, and the best round counts, so that other load on
the machine slows every method alike rather than whichever ran at the time.

    python bench/decode_cpu.py [--data ../shared/data/imagenette-mini] [--crop 224] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headstart.models.decode import decode_image, decode_pixels
from headstart.models.preprocess import Preprocess, to_uint8_tensor

SIZES = ((224, 224), (500, 375), (1600, 1200), (3200, 2400))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    default_data = here.parent.parent / "shared/data/imagenette-mini"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    photos = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not photos:
        raise SystemExit(f"no JPEGs under {args.data}")
    preprocess = Preprocess(
        resize_size=round(args.crop * 256 / 224),
        crop_size=args.crop,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bilinear",
    )
    side = preprocess.resize_size
    methods = {
        "pillow": lambda data: _pillow_resized(decode_image(data, side), preprocess),
        "turbo": lambda data: to_uint8_tensor(_turbo(data), preprocess),
        "headstart": lambda data: to_uint8_tensor(decode_pixels(data, side), preprocess),
    }
    print(f"one thread, crop {args.crop}; images/s per core (difference from pillow, mean/255)")
    rng = np.random.default_rng(0)
    for width, height in SIZES:
        count = max(8, min(200, 8_000_000 // (width * height)))
        jpegs = [_jpeg(photos, rng, width, height) for _ in range(count)]
        rates = _interleaved(methods, jpegs, args.rounds)
        reference = [methods["pillow"](data) for data in jpegs]
        cells = []
        for name, method in methods.items():
            difference = np.mean(
                [_difference(method(data), ref) for data, ref in zip(jpegs, reference, strict=True)]
            )
            cells.append(f"{name} {rates[name]:6.0f} ({difference:.3f})")
        ratio = rates["headstart"] / rates["pillow"]
        print(f"{width}x{height:<5} " + "   ".join(cells) + f"   headstart {ratio:.2f}x pillow")


def _interleaved(
    methods: dict[str, Callable[[bytes], torch.Tensor]], jpegs: list[bytes], rounds: int
) -> dict[str, float]:
    best = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for name, method in methods.items():
            began = time.perf_counter()
            for data in jpegs:
                method(data)
            best[name] = max(best[name], len(jpegs) / (time.perf_counter() - began))
    return best


def _pillow_resized(image: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """The baseline: resize and crop on the PIL image, as ``ImageClassification`` does."""
    from torchvision.transforms import functional as F

    image = F.resize(image, [preprocess.resize_size], antialias=True)
    return F.pil_to_tensor(F.center_crop(image, [preprocess.crop_size]))


def _turbo(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated
        return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)


def _jpeg(photos: list[Path], rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG of real photo content: one photo, or a mosaic of them for larger sizes."""
    canvas = Image.new("RGB", (width, height))
    tile = 224 if width > 500 else max(width, height)
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            photo = Image.open(photos[rng.integers(len(photos))]).convert("RGB")
            canvas.paste(photo.resize((tile, tile)), (x, y))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.int() - b.int()).abs().float().mean())


if __name__ == "__main__":
    main()
