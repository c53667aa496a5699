"""The verbs of the ``headstart`` command, one module per concern; ``cli.py`` holds the group.

Every verb only parses options, calls the library and prints. Heavy imports (torch, h5py) happen
inside the verbs, so ``headstart --help`` is instant.
"""

from __future__ import annotations

from headstart.commands.audit import audit
from headstart.commands.cache import cache, export, info
from headstart.commands.extract import extract
from headstart.commands.finetune import finetune
from headstart.commands.heads import evaluate, predict, train
from headstart.commands.models import layers, models
from headstart.commands.neighbors import index, knn
from headstart.commands.report import report
from headstart.commands.serve import serve

__all__ = ["COMMANDS"]

COMMANDS = (
    extract,
    info,
    export,
    cache,
    models,
    layers,
    train,
    evaluate,
    predict,
    index,
    knn,
    finetune,
    report,
    audit,
    serve,
)
