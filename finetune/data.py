"""Labelled image files for fine-tuning: augmented for training, exactly as extracted for
evaluation.

Augmentation draws from a random state seeded by (seed, epoch, image index), so an epoch's crops
and flips do not depend on worker count or on where a resumed run restarted.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from headstart.models.decode import DecodeError, decode_image
from headstart.models.preprocess import Preprocess, to_uint8_tensor
from headstart.workers import loader_workers

__all__ = ["AUGMENTATIONS", "EpochSampler", "LabelledImages", "make_loader"]

AUGMENTATIONS = ("none", "standard")
_SCALE, _RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@dataclass(frozen=True)
class _Sample:
    pixels: torch.Tensor  # (3, H, W) uint8
    label: int
    ok: bool


class LabelledImages(Dataset):
    """``paths[i]`` decoded to a (3, crop, crop) uint8 tensor with label ``labels[i]``.

    ``augment="standard"``: a random resized crop and a horizontal flip at the weights' crop
    size; ``"none"`` (and every evaluation): the extract resize and centre crop. An image that
    can no longer be decoded yields ``ok=False`` and is dropped by :func:`collate`.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        preprocess: Preprocess,
        *,
        augment: str = "none",
        seed: int = 0,
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, not {augment!r}")
        self.paths, self.labels = list(paths), list(labels)
        self.preprocess, self.augment, self.seed = preprocess, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Sample:
        crop = self.preprocess.crop_size
        try:
            with open(self.paths[index], "rb") as f:
                image = decode_image(f.read(), min_side=self.preprocess.resize_size)
        except (OSError, DecodeError):
            return _Sample(torch.zeros((3, crop, crop), dtype=torch.uint8), -1, False)
        if self.augment == "none":
            return _Sample(to_uint8_tensor(image, self.preprocess), self.labels[index], True)
        return _Sample(self._augmented(image, index), self.labels[index], True)

    def _augmented(self, image: Image.Image, index: int) -> torch.Tensor:
        crop = self.preprocess.crop_size
        # torchvision draws the box and the flip from the global RNG: fork it, seeded for this
        # image, so the caller's random state is untouched and the draw is reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(
                ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + index) % 2**63
            )
            top, left, height, width = RandomResizedCrop.get_params(image, _SCALE, _RATIO)
            flip = bool(torch.rand(()) < 0.5)
        image = F.resized_crop(
            image,
            top,
            left,
            height,
            width,
            [crop, crop],
            InterpolationMode(self.preprocess.interpolation),
            antialias=True,
        )
        if flip:
            image = F.horizontal_flip(image)
        return F.pil_to_tensor(image)


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch from (seed, epoch), starting ``skip`` indices in (a run
    resumed mid-epoch sees the rest of the very same order)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        return iter(order[self.skip :].tolist())

    def __len__(self) -> int:
        return self.size - self.skip


def collate(samples: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(pixels, labels, number of undecodable images dropped)."""
    good = [s for s in samples if s.ok]
    if not good:
        return torch.empty((0, 3, 0, 0), dtype=torch.uint8), torch.empty(0, dtype=torch.long), 0
    pixels = torch.stack([s.pixels for s in good])
    labels = torch.tensor([s.label for s in good], dtype=torch.long)
    return pixels, labels, len(samples) - len(good)


def make_loader(
    dataset: LabelledImages,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    # An own generator: creating the loader must not draw from the global RNG, which dropout
    # uses and a checkpoint restores.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        drop_last=False,
        generator=torch.Generator().manual_seed(0),
        **loader_workers(workers, _leave_interrupts_to_the_trainer),
    )


def _leave_interrupts_to_the_trainer(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the trainer finishes its step and shuts the
    # workers down itself, which a worker dying of the signal first would turn into an error.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
