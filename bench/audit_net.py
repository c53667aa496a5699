"""A small CNN for 64-pixel photos, trained on the fly by bench/audit_planted.py: the offline
stand-in for a pretrained backbone (random-init features do not find near-copies well).

Load it in headstart as ``--model bench/audit_net.py:photo_cnn --weights CHECKPOINT``; the
embedding is the input of ``fc`` (``WIDTH`` values after global average pooling).
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 256
CLASSES = 10


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class PhotoNet(nn.Module):
    """Four conv stages (64 -> 32 -> 16 -> 8 pixels), global average pooling, a classifier."""

    def __init__(self, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(3, 32),
            nn.MaxPool2d(2),
            _block(32, 64),
            nn.MaxPool2d(2),
            _block(64, 128),
            nn.MaxPool2d(2),
            _block(128, WIDTH),
            _block(WIDTH, WIDTH),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(images))))


def photo_cnn() -> nn.Module:
    """The network as trained (10 classes), for ``--model bench/audit_net.py:photo_cnn``."""
    return PhotoNet()
