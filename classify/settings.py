"""What ``train`` is asked to do, as plain settings.

They import nothing heavy, so the commands read their options' defaults from them: each default is
declared here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_HEAD", "VAL_SPLIT", "TrainOptions"]

DEFAULT_HEAD = "logreg"  # what `train` fits when no head is named
VAL_SPLIT = 0.2  # the held-out fraction when no validation source is given


@dataclass(frozen=True)
class TrainOptions:
    """Which heads, how validated, and whether to sweep their hyper-parameters."""

    heads: tuple[str, ...] = (DEFAULT_HEAD,)
    params: dict[str, dict] = field(default_factory=dict)
    val_sources: tuple[str, ...] = ()
    val_split: float = VAL_SPLIT
    sweep: bool = False
    seed: int = 0
    plot: bool = False
    refit: bool = True  # after a sweep; off keeps validation unseen (e.g. for fine-tuning next)
    classes: tuple[str, ...] | None = None  # zeroshot's class names; None: the sources' labels
    max_memory: int | None = None  # bytes the whole process may hold; None: half the free RAM
