"""The user's own models: TorchScript files and Python factories returning an ``nn.Module``.

They are given as trained: their embedding is what goes into their final classifier, found as
:mod:`.classifier` says, or their output when they have none (pooled when it is a feature map).
Their weights come with them, or from ``--weights FILE``; their preprocessing comes from explicit
options, or the documented default, and is recorded in the fingerprint either way.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
import warnings
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from headstart.cache.keys import file_key
from headstart.errors import HeadstartError, first_line
from headstart.models.backbones import Backbone, BackboneWeights, register_source, seeded
from headstart.models.checkpoints import file_weights, is_weights_file

__all__ = ["PythonFactorySource", "TorchScriptSource"]


def _weights(spec: str, identity: str, origin: str) -> BackboneWeights:
    if is_weights_file(spec):
        return file_weights(spec, None)
    if spec.upper() in ("DEFAULT", "NONE"):
        return BackboneWeights(identity=identity, origin=origin, preprocess=None)
    raise HeadstartError(f"--weights for a local model takes DEFAULT, none or a file, not {spec!r}")


@register_source("torchscript")
class TorchScriptSource:
    """A TorchScript file made with ``torch.jit.script``/``trace`` and ``torch.jit.save``."""

    def names(self) -> list[str]:
        return []

    def resolve(self, name: str, weights: str) -> Backbone:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise HeadstartError(f"TorchScript file not found: {name!r}")
        digest = f"sha256:{file_key(str(path))}"
        return Backbone(
            name=f"torchscript:{path}",
            weights=_weights(weights, "embedded", str(path)),
            build=partial(_load_torchscript, path),
            head_rule="find-classifier",
            family="torchscript",
            code_identity=digest,
            code_file=str(path),
        )


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch announces TorchScript's deprecation on every load; the user chose the format.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        reason = first_line(exc).split(". ")[0]
        raise HeadstartError(
            f"{path} is not a TorchScript model ({reason}); a file of weights (a state_dict) "
            "goes to --weights, with the architecture as --model (e.g. --model resnet50)"
        ) from None


@register_source("python")
class PythonFactorySource:
    """``package.module:factory`` or ``path/to/file.py:factory``; ``factory()`` -> ``nn.Module``."""

    def names(self) -> list[str]:
        return []

    def resolve(self, name: str, weights: str) -> Backbone:
        module_name, _, factory_name = name.rpartition(":")
        module = _import(module_name)
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise HeadstartError(f"{module_name} has no callable {factory_name!r}")
        if module_name.endswith(".py"):
            # The file named, not the module's __file__: modules are shared by content, so
            # that may be an identical copy elsewhere, since edited or removed.
            module_name = source = str(Path(module_name).expanduser().resolve())
        else:
            source = inspect.getsourcefile(module)
            source = source if source and os.path.isfile(source) else None
        canonical = f"python:{module_name}:{factory_name}"
        return Backbone(
            name=canonical,
            weights=_weights(weights, "factory-defined", canonical),
            build=seeded(partial(_call_factory, factory, name)),
            head_rule="find-classifier",
            family="python",
            # A changed factory file gives new vectors: its hash goes into the fingerprint.
            code_identity=f"sha256:{file_key(source)}" if source else None,
            code_file=source,
        )


def _import(module_name: str) -> ModuleType:
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise HeadstartError(f"model file not found: {module_name!r}")
        unique = f"headstart_user_model_{file_key(str(path))[:12]}"
        if unique in sys.modules:
            return sys.modules[unique]
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise HeadstartError(f"cannot import {module_name!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module  # DataLoader workers and pickling find it by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[unique]
            reason = _user_error(exc, str(path))
            raise HeadstartError(f"cannot import {module_name!r}: {reason}") from None
        return module
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise HeadstartError(f"cannot import {module_name!r}: {_user_error(exc, None)}") from None


def _call_factory(factory, spec: str) -> nn.Module:
    try:
        model = factory()
    except Exception as exc:
        try:
            source = inspect.getsourcefile(factory)
        except TypeError:  # a built-in or C-extension callable has no source file
            source = None
        reason = _user_error(exc, source)
        raise HeadstartError(f"{spec} failed: {reason}") from None
    if not isinstance(model, nn.Module):
        raise HeadstartError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _user_error(exc: Exception, source: str | None) -> str:
    """An error raised by the user's own model code, in one line that points into ``source``."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({Path(exc.filename or '?').name}, line {exc.lineno})"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == source]
    where = f" ({Path(source).name}, line {lines[-1]})" if lines else ""
    return f"{type(exc).__name__}: {first_line(exc)}{where}"
