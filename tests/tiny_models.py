"""Small models for tests, loadable as ``tests/tiny_models.py:FACTORY`` model specs."""

from __future__ import annotations

import time

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv features then a Linear classifier: 8-wide pre-logits, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def tiny_features() -> nn.Module:
    """An embedding model: its output (a feature map) is pooled to 8 values."""
    return TinyNet().features


class Slow(nn.Module):
    """Sleeps per batch so a test can kill the process mid-run."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_features()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.15)
        return self.body(x)


def slow_features() -> nn.Module:
    return Slow()


def stripes_features() -> nn.Module:
    """A small CNN with a 4-wide embedding: few enough dimensions that pretraining on colour
    leaves little room for anything else (the fine-tuning test relies on that)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1),
    )


def pause_when_training(x: torch.Tensor, training: bool) -> torch.Tensor:
    if training:
        time.sleep(0.1)
    return x


# Kept as a call in traced graphs (fine-tuning traces the backbone to fold BatchNorm), so the
# traced copy sleeps too instead of having run the sleep once while being traced.
torch.fx.wrap("pause_when_training")


class _SlowTraining(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = stripes_features()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(pause_when_training(x, self.training))


def slow_stripes_features() -> nn.Module:
    """``stripes_features`` that sleeps per training batch, so a test can stop it mid-run.
    Its state dict has a ``body.`` prefix; tests save checkpoints for each form."""
    return _SlowTraining()
