"""Package names imported on first use (PEP 562), so that `headstart --help`, and a rerun with
nothing to embed, never import torch or the model libraries."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: a name in ``homes`` is imported from
    ``package.<homes[name]>`` when first asked for, then kept in the package.

    Example:
        >>> __getattr__ = lazy_exports(__name__, {"extract": "runner"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
