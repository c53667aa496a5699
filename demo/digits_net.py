"""A small CNN for the 32x32 digit images: the demo's home-made "pretrained" backbone.

It is trained on digits 0-4 by ``demo/pretrain.py`` and then transferred to digits 5-9, so it has
to be small enough to train in seconds on one CPU core, yet learn stroke features that carry over
to digits it never saw. Load it in headstart with

    --model demo/digits_net.py:digits_cnn --weights CHECKPOINT

``forward`` returns logits, like any network as trained; the embedding is the input of ``fc``
(the output of ``flatten``, ``WIDTH`` values after global average pooling).
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 128


def block(channels_in: int, channels_out: int) -> nn.Sequential:
    """Conv-BN-ReLU: BatchNorm lets a few epochs with a plain learning rate converge."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class DigitsNet(nn.Module):
    """Three conv stages (32x32 -> 16x16 -> 8x8), global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            block(3, 32),
            nn.MaxPool2d(2),
            block(32, 64),
            nn.MaxPool2d(2),
            block(64, WIDTH),
            block(WIDTH, WIDTH),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(images))))


def digits_cnn() -> nn.Module:
    """The source task's network (5 classes), for ``--model demo/digits_net.py:digits_cnn``.

    Only torch's default initialisation is random here, which headstart seeds.
    """
    return DigitsNet()
