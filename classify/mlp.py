"""A one-hidden-layer perceptron head, trained in torch on standardised embeddings."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from headstart.classify.heads import Head, HeadOption, register_head
from headstart.classify.linear import Standardizer
from headstart.device import AUTO, resolve_device

__all__ = ["MLPHead"]


@register_head("mlp")
class MLPHead(Head):
    """Linear -> ReLU -> dropout -> Linear, trained with AdamW and a cosine schedule.

    Training is deterministic for a given ``random_state`` (initialisation and batch order).

    Example:
        >>> MLPHead(hidden=512, epochs=30).fit(X, y).score(X_val, y_val)  # doctest: +SKIP
    """

    options = (
        HeadOption("hidden", int, "Hidden units.", minimum=1),
        HeadOption("epochs", int, "Training epochs.", minimum=1),
    )
    grid = ("weight_decay", (1e-4, 1e-2))

    @classmethod
    def fit_bytes(cls, n: int, d: int, n_classes: int, n_values: int = 1) -> int:
        # Every row as read, standardised, and as the tensor the epochs shuffle (float32).
        return 3 * 4 * n * d

    def __init__(
        self,
        hidden: int = 512,
        *,
        epochs: int = 30,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = 0.1,
        batch_size: int = 256,
        device: str = AUTO,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPHead:
        X, index = self._encode(X, y)
        standardizer = Standardizer.fit(X)
        device = resolve_device(self.device)
        data = torch.from_numpy(standardizer(X)).to(device)
        targets = torch.from_numpy(index).to(device)
        # Initialisation, batch order and dropout all draw from the seeded generators, so a
        # refit gives the same head; the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.random_state)
            network = self._network(X.shape[1], len(self.classes_)).to(device)
            self._train(network, data, targets)
        self.mean_, self.scale_ = standardizer.mean, standardizer.scale
        first, last = network[0], network[3]
        self.w1_, self.b1_ = first.weight.detach().cpu().numpy(), first.bias.detach().cpu().numpy()
        self.w2_, self.b2_ = last.weight.detach().cpu().numpy(), last.bias.detach().cpu().numpy()
        return self

    def _train(self, network: nn.Sequential, data: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer = torch.optim.AdamW(
            network.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        steps = self.epochs * -(-len(data) // self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        network.train()
        for _ in range(self.epochs):
            for rows in torch.randperm(len(data)).split(self.batch_size):
                rows = rows.to(data.device)
                loss = nn.functional.cross_entropy(network(data[rows]), targets[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._check_features(X)
        hidden = np.maximum((X - self.mean_) / self.scale_ @ self.w1_.T + self.b1_, 0)
        logits = torch.from_numpy(np.ascontiguousarray(hidden @ self.w2_.T + self.b2_, np.float32))
        return logits.softmax(dim=1).numpy()

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean_,
            "scale": self.scale_,
            "w1": self.w1_,
            "b1": self.b1_,
            "w2": self.w2_,
            "b2": self.b2_,
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        for name in ("mean", "scale", "w1", "b1", "w2", "b2"):
            setattr(self, f"{name}_", arrays[name])
        self.n_features_in_ = self.w1_.shape[1]

    def _network(self, features: int, classes: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(features, self.hidden),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, classes),
        )
