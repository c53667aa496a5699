"""Fine-tuning: the backbone unfrozen and trained end to end, starting from the cached head.

Example:
    >>> from headstart.extract import ExtractOptions
    >>> from headstart.finetune import FinetuneOptions, finetune
    >>> result = finetune(["data/train"], ExtractOptions("resnet18"), ".headstart",
    ...                   FinetuneOptions(), "runs/ft")  # doctest: +SKIP
    >>> result.best.val_accuracy  # doctest: +SKIP
"""

from headstart.lazy import lazy_exports

__all__ = [
    "EpochRecord",
    "FinetuneOptions",
    "FinetuneResult",
    "LoopSettings",
    "TrainingInterrupted",
    "finetune",
]

_HOMES = {
    "EpochRecord": "loop",
    "LoopSettings": "settings",
    "TrainingInterrupted": "loop",
    "FinetuneOptions": "settings",
    "FinetuneResult": "run",
    "finetune": "run",
}


# Lazy: `headstart --help` imports the command module beside these, and must stay instant.
__getattr__ = lazy_exports(__name__, _HOMES)
