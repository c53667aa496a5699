"""WiSE-FT (Wortsman et al. 2022): weight-space ensembles of the zero-shot and the fine-tuned
model.

``theta(alpha) = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned``, for the backbone and
the classifier alike (``alpha`` 0: the zero-shot model, 1: the fine-tuned one). Both ends share
one architecture, so every mix is an ordinary network: it is scored on the validation split like
any epoch, and the best mix is published as the run's model.

Example:
    >>> parse_alphas(["0,0.5", "1"])
    (0.0, 0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from headstart.errors import HeadstartError
from headstart.finetune.loop import EpochRecord, Trainer

__all__ = ["MixRecord", "best_mix", "mix_states", "parse_alphas", "score_mixes", "wise_document"]


def parse_alphas(values: Iterable[str]) -> tuple[float, ...]:
    """``--wise`` values (each a number or a comma list of them, all in [0, 1]), sorted, once
    each."""
    alphas: set[float] = set()
    for value in values:
        for part in str(value).split(","):
            try:
                alpha = float(part)
            except ValueError:
                raise HeadstartError(
                    f"--wise takes mixing coefficients in [0, 1] (0.5, or 0,0.25,0.5), "
                    f"not {part.strip()!r}"
                ) from None
            if not 0.0 <= alpha <= 1.0:
                raise HeadstartError(f"--wise coefficients lie in [0, 1], not {alpha:g}")
            alphas.add(alpha)
    return tuple(sorted(alphas))


def mix_states(
    zeroshot: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zeroshot + alpha * finetuned`` per floating-point tensor; integer ones
    (BatchNorm's step counters) are the fine-tuned model's. On the CPU, in each tensor's dtype."""
    if zeroshot.keys() != finetuned.keys():
        differ = sorted(zeroshot.keys() ^ finetuned.keys())[:3]
        raise ValueError(f"the two states hold different tensors: {differ}")
    mixed = {}
    for name, start in zeroshot.items():
        start, end = start.detach().cpu(), finetuned[name].detach().cpu()
        if start.is_floating_point():
            mixed[name] = (1 - alpha) * start + alpha * end.to(start.dtype)
        else:
            mixed[name] = end.clone()
    return mixed


@dataclass(frozen=True)
class MixRecord:
    """One mix's validation metrics (``record.epoch`` is meaningless for a mix)."""

    alpha: float
    record: EpochRecord

    def as_dict(self) -> dict:
        metrics = self.record.as_dict()
        keep = ("val_accuracy", "val_loss", "val_balanced_accuracy", "val_macro_f1")
        return {"alpha": self.alpha, **{k: metrics[k] for k in keep if k in metrics}}


def score_mixes(
    trainer: Trainer,
    zeroshot: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    alphas: Iterable[float],
    *,
    zeroshot_record: EpochRecord,
    finetuned_record: EpochRecord,
) -> list[MixRecord]:
    """Validation metrics of each mix. The ends are the states the run already scored (epoch 0
    and the best epoch), so they are taken from those records; every other mix is loaded into
    ``trainer.network`` and validated (streamed, like an epoch), which leaves the last mix there.
    """
    records = []
    for alpha in alphas:
        if alpha == 0.0:
            record = zeroshot_record
        elif alpha == 1.0:
            record = finetuned_record
        else:
            trainer.network.load_state_dict(mix_states(zeroshot, finetuned, alpha))
            record = trainer.validate()
        records.append(MixRecord(alpha, record))
    return records


def best_mix(records: list[MixRecord]) -> MixRecord:
    """The most accurate mix on validation; among equals the lowest loss, then the smallest
    alpha (closest to zero-shot)."""
    return min(records, key=lambda m: (-m.record.val_accuracy, m.record.val_loss, m.alpha))


def wise_document(
    records: list[MixRecord],
    chosen: MixRecord,
    *,
    zeroshot: EpochRecord,
    finetuned: EpochRecord,
    linear_probe: float | None,
) -> dict:
    """What ``wise.json`` holds: every mix, the one published, and the references."""
    return {
        "alphas": [m.as_dict() for m in records],
        "chosen_alpha": chosen.alpha,
        "zeroshot": MixRecord(0.0, zeroshot).as_dict(),
        "finetuned": {**MixRecord(1.0, finetuned).as_dict(), "epoch": finetuned.epoch},
        "linear_probe": None if linear_probe is None else {"val_accuracy": linear_probe},
    }
