"""Local weights files: identity by content hash, and loading that never runs code from the file.

``.safetensors`` files are read with safetensors; anything else with
``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and plain
containers.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.cache.keys import file_key
from headstart.errors import HeadstartError
from headstart.models.backbones import BackboneWeights
from headstart.models.classifier import CLASSIFIER_NAMES
from headstart.models.preprocess import Preprocess

__all__ = [
    "apply_checkpoint",
    "file_weights",
    "is_weights_file",
    "load_checkpoint",
    "load_tensors_file",
]

log = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the state dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "backbone")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def is_weights_file(spec: str) -> bool:
    """A weights spec that names a file (rather than DEFAULT, none or an enum name)."""
    return os.sep in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def file_weights(path_text: str, preprocess: Preprocess | None) -> BackboneWeights:
    """Weights from a local file; its identity is the SHA-256 of its bytes."""
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise HeadstartError(f"weights file not found: {path_text!r}")
    return BackboneWeights(
        identity=f"file:sha256:{file_key(str(path))}",
        origin=str(path),
        preprocess=preprocess,
        checkpoint=path,
    )


def load_tensors_file(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with every way the file can be wrong told in one line.

    Files from elsewhere fail inside the unpickler in many ways (IndexError, KeyError, ...), so
    any failure to read is reported as such rather than as a traceback.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise HeadstartError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            raise HeadstartError(
                f"{path} holds Python objects besides tensors, and loading them could run code; "
                "save just the weights: torch.save(model.state_dict(), PATH)"
            ) from None
        raise HeadstartError(
            f"{path} is not a readable PyTorch weights file (corrupt, truncated or another format)"
        ) from None


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a checkpoint file."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise HeadstartError("reading .safetensors needs: pip install safetensors") from None
        return load_file(str(path))
    loaded = load_tensors_file(path)
    if isinstance(loaded, nn.Module):  # pragma: no cover - weights_only never yields a module
        loaded = loaded.state_dict()
    for key in _NESTED_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise HeadstartError(f"{path} is not a state dict of tensors")
    return {_strip_wrappers(k): v for k, v in loaded.items()}


def apply_checkpoint(model: nn.Module, path: Path, ignored_prefixes: Iterable[str] = ()) -> None:
    """Load ``path`` into ``model``; only keys of the removed classifier may be left over.

    Those are the keys under ``ignored_prefixes`` (the classifier headstart cut), or, with a
    note, the weight and bias of a classifier the network's own code already removed.
    """
    state = load_checkpoint(path)
    ignored = tuple(ignored_prefixes)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise HeadstartError(f"{path} does not fit this model: {first}") from None
    unexpected = [k for k in unexpected if not (ignored and k.startswith(ignored))]
    if unexpected and not missing and _removed_classifier(model, unexpected):
        log.warning(
            "ignored %s in %s: the weights of a classifier this network no longer has",
            ", ".join(unexpected),
            path.name,
        )
        unexpected = []
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise HeadstartError(
            f"{path} does not fit this model ({detail}); is it a checkpoint of this architecture?"
        )


def _removed_classifier(model: nn.Module, keys: list[str]) -> bool:
    """Whether ``keys`` are the weight and bias of a classifier the network no longer has: under
    a classifier's name, or under a module now without parameters (an ``nn.Identity``)."""
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias"):
            return False
        if prefix.rpartition(".")[2] in CLASSIFIER_NAMES:
            continue
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            return False
        if any(True for _ in module.parameters()):
            return False
    return True


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key
