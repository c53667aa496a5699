"""Backbones by name: a registry of model sources and the typed records they resolve to.

A model spec names its source by a prefix; a bare name is a torchvision model::

    resnet50                      torchvision (also ``torchvision:resnet50``)
    timm:convnext_tiny.fb_in1k    timm, when installed
    open_clip:ViT-B-32/laion2b_s34b_b79k   open_clip's image tower, when installed
    path/to/model.pt              a TorchScript file (also ``torchscript:PATH``)
    my_pkg.models:build_net       a factory returning an ``nn.Module`` (also ``file.py:factory``)

:func:`get_backbone` and :func:`list_backbones` are the only ways in. Resolving a backbone loads
nothing heavy: the record knows its weights' identity and preprocessing, and builds the model
only when :meth:`Backbone.build` is called.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.models.preprocess import Preprocess

__all__ = [
    "Backbone",
    "BackboneSource",
    "BackboneWeights",
    "WeightsUnavailable",
    "get_backbone",
    "list_backbones",
    "register_source",
    "seeded",
]

# How the pre-logits vector is reached: drop the last Linear layer (torchvision classifiers),
# take the module's output as it is (timm with num_classes=0), or find the final classifier of
# a network given as trained (user factories, TorchScript; see :mod:`.classifier`).
HeadRule = Literal["last-linear", "as-is", "find-classifier"]

RANDOM_INIT_SEED = 0

_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip")


class WeightsUnavailable(HeadstartError):
    """Pretrained weights could not be had (offline, empty cache); says how to supply them."""


@dataclass(frozen=True)
class BackboneWeights:
    """One weights choice: its identity (part of the fingerprint), origin and preprocessing.

    ``checkpoint`` is a local weights file applied after the classifier is removed;
    ``ensure_available`` fetches pretrained weights (raising :class:`WeightsUnavailable`);
    ``availability_file`` is the local file whose presence makes them available, where one
    file decides it (torchvision's hub cache), so that decision can be remembered.
    """

    identity: str
    origin: str
    preprocess: Preprocess | None
    categories: tuple[str, ...] | None = None
    checkpoint: Path | None = None
    ensure_available: Callable[[], None] | None = field(default=None, compare=False)
    availability_file: str | None = None

    @property
    def is_random(self) -> bool:
        return self.identity.startswith("random-init")


@dataclass(frozen=True)
class Backbone:
    """A resolved model spec: canonical name, weights, and how to build and read it.

    ``code_identity`` hashes model code that lives in user files (TorchScript, factories), so
    editing the file changes the fingerprint (for open_clip: the architecture's config);
    ``code_file`` is that file. ``classifier`` is,
    for ``find-classifier`` backbones, the module cut off (``none``: no cut), or None until
    :func:`headstart.extract.runner.resolve_recipe` has found it.
    """

    name: str
    weights: BackboneWeights
    build: Callable[[], nn.Module] = field(compare=False)
    head_rule: HeadRule = "last-linear"
    family: str = "torchvision"
    code_identity: str | None = None
    code_file: str | None = None
    classifier: str | None = None


class BackboneSource(Protocol):
    """A family of backbones (torchvision, timm, files, factories)."""

    def resolve(self, name: str, weights: str) -> Backbone: ...

    def names(self) -> list[str]: ...


_SOURCES: dict[str, type[BackboneSource]] = {}


def register_source(prefix: str) -> Callable[[type[BackboneSource]], type[BackboneSource]]:
    """Class decorator: make a backbone source reachable as ``prefix:NAME``."""

    def register(cls: type[BackboneSource]) -> type[BackboneSource]:
        if prefix in _SOURCES:
            raise ValueError(f"backbone source {prefix!r} is already registered")
        _SOURCES[prefix] = cls
        return cls

    return register


def get_backbone(spec: str, weights: str = "DEFAULT") -> Backbone:
    """Resolve a model spec and a weights spec (``DEFAULT``, an enum name, ``none``, a file).

    Example:
        >>> backbone = get_backbone("resnet50", "IMAGENET1K_V2")  # doctest: +SKIP
        >>> backbone.weights.preprocess.resize_size
        232
    """
    _load_builtin_sources()
    prefix, name = _split_spec(spec)
    if prefix not in _SOURCES:
        raise HeadstartError(
            f"unknown model source {prefix!r} in {spec!r}; known: {sorted(_SOURCES)}"
        )
    return _SOURCES[prefix]().resolve(name, weights)


def list_backbones(prefix: str | None = None) -> list[str]:
    """Model specs the registered sources can list (files and factories cannot be listed)."""
    _load_builtin_sources()
    prefixes = [prefix] if prefix else sorted(_SOURCES)
    unknown = [p for p in prefixes if p not in _SOURCES]
    if unknown:
        raise HeadstartError(f"unknown model source {unknown[0]!r}; known: {sorted(_SOURCES)}")
    return [name for p in prefixes for name in _SOURCES[p]().names()]


def seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Wrap a builder so random initialisation is the same every time, without touching the
    caller's RNG: a cache keyed on "random init" must mean one fixed set of weights."""

    def build_seeded() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return build()

    return build_seeded


def random_weights(preprocess: Preprocess | None) -> BackboneWeights:
    return BackboneWeights(
        identity=f"random-init:seed={RANDOM_INIT_SEED}:torch={torch.__version__.split('+')[0]}",
        origin=f"random initialisation (seed {RANDOM_INIT_SEED})",
        preprocess=preprocess,
    )


def _split_spec(spec: str) -> tuple[str, str]:
    if not spec:
        raise HeadstartError(
            "empty model name; try resnet50, timm:NAME, model.pt or pkg.mod:factory"
        )
    head, sep, rest = spec.partition(":")
    if sep and head in _SOURCES:
        return head, rest
    if os.path.isfile(spec) and spec.endswith(_TORCHSCRIPT_SUFFIXES):
        return "torchscript", spec
    if sep and rest.isidentifier() and (head.endswith(".py") or _is_dotted(head)):
        return "python", spec
    return "torchvision", spec


def _is_dotted(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _load_builtin_sources() -> None:
    # Imported here, not at module import: each source module registers itself, and timm and
    # open_clip are optional. Python's import cache makes this a no-op after the first call.
    from headstart.models import _local, _open_clip, _timm, _torchvision  # noqa: F401
