"""What a fine-tuning run is asked to do, as plain settings.

They import nothing heavy, so the ``finetune`` command reads its options' defaults from them: each
default is declared here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headstart.classify.settings import VAL_SPLIT

__all__ = [
    "CONFIG",
    "CURVE",
    "HEAD",
    "INITS",
    "METRICS",
    "PROBE",
    "WISE",
    "ZEROSHOT",
    "FinetuneOptions",
    "LoopSettings",
]

# What a run directory holds, named once: the loop and the run write these, and `report` reads
# them without importing torch.
CONFIG, METRICS, HEAD, PROBE, CURVE, ZEROSHOT, WISE = (
    "config.json",
    "metrics.jsonl",
    "head",
    "probe",
    "learning_curve.png",
    "zeroshot",  # --init zeroshot: the zero-shot head the network starts from
    "wise.json",  # --wise: validation metrics of each weight-space mix, and the one published
)

#: Where stage 2's classifier starts: a linear probe on the cache, or the zero-shot head.
INITS = ("probe", "zeroshot")


@dataclass(frozen=True)
class LoopSettings:
    """How stage 2 trains: the schedule, the batch, early stopping, the data loader."""

    epochs: int = 10
    lr: float = 1e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of all steps
    label_smoothing: float = 0.0
    batch_size: int = 32
    accumulate: int = 1
    patience: int = 3  # epochs without a better validation accuracy; 0: never stop early
    train_bn: bool = False
    precision: str = "fp32"
    workers: int = 2  # decoding processes
    seed: int = 0


@dataclass(frozen=True)
class FinetuneOptions:
    """Stage 1 (probe) and stage 2 (fine-tune) settings besides the model and the loop's."""

    val_sources: tuple[str, ...] = ()
    val_split: float = VAL_SPLIT
    head_dir: str | None = None
    probe_C: float = 1.0
    init: str = "probe"  # one of INITS
    prompts: str = "openai"  # --init zeroshot's prompt templates (classify.zeroshot)
    wise: tuple[float, ...] = ()  # WiSE-FT mixing coefficients to evaluate (--init zeroshot)
    unfreeze: str = "all"
    augment: str = "standard"
    loop: LoopSettings = field(default_factory=LoopSettings)
