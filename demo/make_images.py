"""Generate the demo image set: three classes of drawn shapes, as JPEG files in class folders.

Deterministic (fixed seed), offline, about 70 files and 1 MB:

    python demo/make_images.py demo/images
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circles", "squares", "stripes")
PER_CLASS = 24


def draw(kind: str, rng: random.Random) -> Image.Image:
    width, height = rng.choice([(320, 240), (240, 320), (300, 300), (480, 360)])
    background = tuple(rng.randrange(40, 220) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 5)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(min(width, height) // 10, min(width, height) // 4)
        if kind == "circles":
            pen.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif kind == "squares":
            pen.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        else:
            step = rng.randint(8, 24)
            for offset in range(-height, width, step * 2):
                pen.line([(offset, 0), (offset + height, height)], fill=colour, width=step // 2)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))


def main(out: Path) -> None:
    rng = random.Random(0)
    for kind in CLASSES:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(PER_CLASS):
            draw(kind, rng).save(folder / f"{kind}_{index:02d}.jpg", quality=90)
    print(f"wrote {len(CLASSES) * PER_CLASS} images in {len(CLASSES)} classes to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/images"))
