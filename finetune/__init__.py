"""Fine-tuning: the backbone unfrozen and trained end to end, starting from the cached head.

Example:
    >>> from headstart.extract import ExtractOptions
    >>> from headstart.finetune import FinetuneOptions, finetune
    >>> result = finetune(["data/train"], ExtractOptions("resnet18"), ".headstart",
    ...                   FinetuneOptions(), "runs/ft")  # doctest: +SKIP
    >>> result.best.val_accuracy  # doctest: +SKIP
"""

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


def __getattr__(name: str):
    # Lazy: `headstart --help` imports the command module beside these, and must stay instant.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"headstart.finetune.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'headstart.finetune' has no attribute {name!r}")
