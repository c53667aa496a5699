"""Preprocessing the user asks for, as a plain record importable without torch: it is part of
an extraction's request (:class:`~headstart.extract.options.ExtractOptions`), which an
unchanged rerun reads without loading a model."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PreprocessOverrides"]


@dataclass(frozen=True)
class PreprocessOverrides:
    """What the user set explicitly; ``None`` leaves the field to the weights or the default."""

    resize_size: int | None = None
    crop_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    resize_mode: str | None = None
