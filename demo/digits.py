"""Write scikit-learn's bundled handwritten digits as photos-like PNG files, offline.

The demo needs a pretrained backbone without downloading one, so it makes its own: a small CNN is
trained on a SOURCE task (digits 0-4) and transferred to a TARGET task with other classes (digits
5-9). As with ImageNet and a user's photos, the two tasks share a world of nuisances the
backbone must learn to see past: every digit is drawn at a random size, angle and place, in a
random colour on a random dark, noisy background. Random convolutional features see mostly those
nuisances; features pretrained on the source task have learned to ignore them. Transfer learning
pays off when labels are scarce, so the target train split is small.

    python demo/digits.py demo/out/images --train-per-class 20 --val-per-class 10

Layout written under OUT (32x32 RGB PNG files, deterministic):

    source/digit_0 ... digit_4/         every image of digits 0-4
    target/train/digit_5 ... digit_9/   TRAIN_PER_CLASS images per class
    target/val/digit_5 ... digit_9/     VAL_PER_CLASS images per class
    target/test/digit_5 ... digit_9/    the rest of digits 5-9
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
SIZE = 32
SEED = 0


def draw(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An 8x8 digit (values 0-16) drawn into a SIZE x SIZE colour picture with nuisances."""
    stroke = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    side = int(rng.integers(22, SIZE - 1))
    stroke = stroke.resize((side, side), Image.Resampling.BICUBIC)
    stroke = stroke.rotate(float(rng.uniform(-8, 8)), Image.Resampling.BILINEAR)
    ink = np.asarray(stroke, np.float32)[..., None] / 255.0
    background = rng.uniform(0.3, 1.0, 3) * rng.uniform(0, 90)
    colour = rng.uniform(0.3, 1.0, 3) * rng.uniform(170, 255)
    canvas = background + rng.normal(0, 8, (SIZE, SIZE, 3))
    top, left = rng.integers(0, SIZE - side + 1, 2)
    window = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = window * (1 - ink) + colour * ink
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def save(images: list[Image.Image], indices: np.ndarray, folder: Path) -> int:
    """Save the pictures at ``indices`` into ``folder``, named by their index in the digits set."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        images[index].save(folder / f"{index:04d}.png")
    return len(indices)


def main(out: Path, train_per_class: int, val_per_class: int) -> None:
    """Write the source set and the target train/val/test split under ``out``."""
    if out.exists() and any(out.iterdir()):
        # A rerun with other sizes would leave stale files in the splits.
        raise SystemExit(f"{out} is not empty: remove it first")
    digits = load_digits()
    rng = np.random.default_rng(SEED)
    pictures = [draw(pixels, rng) for pixels in digits.images]
    labels = digits.target
    counts = {"source": 0, "train": 0, "val": 0, "test": 0}
    for label in SOURCE_CLASSES:
        indices = np.flatnonzero(labels == label)
        counts["source"] += save(pictures, indices, out / "source" / f"digit_{label}")
    for label in TARGET_CLASSES:
        indices = rng.permutation(np.flatnonzero(labels == label))
        if len(indices) <= train_per_class + val_per_class:
            raise SystemExit(f"digit {label} has only {len(indices)} images")
        splits = np.split(indices, [train_per_class, train_per_class + val_per_class])
        for name, members in zip(("train", "val", "test"), splits, strict=True):
            folder = out / "target" / name / f"digit_{label}"
            counts[name] += save(pictures, np.sort(members), folder)
    print(
        f"wrote {counts['source']} source images (digits 0-4) and {counts['train']} train, "
        f"{counts['val']} validation and {counts['test']} test images of the target task "
        f"(digits 5-9) to {out}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--val-per-class", type=int, default=10)
    args = parser.parse_args()
    main(args.out, args.train_per_class, args.val_per_class)
