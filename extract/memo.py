"""Remembered recipes: which fingerprint a request resolved to, so a rerun need not ask torch.

Resolving a request (model, weights, layer, preprocessing, device, precision) into a
:class:`~headstart.cache.fingerprint.Fingerprint` imports torch and the model's library, which
costs seconds, while planning an unchanged rerun costs a ``stat`` per file. So each resolution
is remembered in ``<cache>/recipes/``, keyed by everything it depended on:

* the request as given, the working directory, and the versions of headstart, torch,
  torchvision, timm and open_clip;
* what decides ``auto`` device and precision: the CPU's bf16 flags, the NVIDIA devices and
  driver, ``CUDA_VISIBLE_DEVICES``; and the variables that move weight caches;
* the local files the resolution read (a weights file, a model's source file, the checkpoint
  whose presence decides ``--fallback-random``), by their stat signature, checked at recall.

Anything else (another platform, weights whose availability only their library can tell) is
simply not remembered, and the rerun resolves as before. A remembered recipe is only a
shortcut: before a model runs, the runner resolves again and checks the fingerprint agrees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from headstart import __version__
from headstart.atomic import write_text_atomic
from headstart.cache.fingerprint import Fingerprint
from headstart.extract.options import ExtractOptions

__all__ = ["RecipeMemo", "RememberedRecipe", "request_key"]

MEMO_FORMAT = 1
_ENVIRONMENT = (
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "CUDA_VISIBLE_DEVICES",
)
_PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch")
_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


@dataclass(frozen=True)
class RememberedRecipe:
    """A fingerprint a request resolved to, and why random weights were used, if they were."""

    fingerprint: Fingerprint
    fallback_reason: str | None = None


def request_key(options: ExtractOptions) -> str | None:
    """A digest of the request and of everything its resolution depends on besides files;
    None where that cannot be read cheaply (no ``/proc/cpuinfo``)."""
    machine = _machine()
    if machine is None:
        return None
    document = {
        "format": MEMO_FORMAT,
        "request": {
            "model": options.model,
            "weights": options.weights,
            "layer": options.layer,
            "classifier": options.classifier,
            "preprocess": dataclasses.asdict(options.preprocess),
            "device": options.device,
            "precision": options.precision,
            "fallback_random": options.fallback_random,
        },
        "cwd": os.getcwd(),
        "python": sys.version,
        "versions": {"headstart": __version__, **{name: _version(name) for name in _PACKAGES}},
        "environment": {name: os.environ.get(name) for name in _ENVIRONMENT},
        "machine": machine,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()


class RecipeMemo:
    """``<cache>/recipes/<key>.json`` files: one remembered resolution each.

    Example:
        >>> memo = RecipeMemo(Path(".headstart"))  # doctest: +SKIP
        >>> memo.recall(request_key(options))       # None: resolve the usual way
    """

    def __init__(self, cache_root: Path) -> None:
        self.directory = cache_root / "recipes"

    def recall(self, key: str | None) -> RememberedRecipe | None:
        """The remembered resolution of ``key``, if every file it read is unchanged."""
        if key is None:
            return None
        try:
            document = json.loads((self.directory / f"{key}.json").read_text())
            if document.get("format") != MEMO_FORMAT:
                return None
            inputs = [(path, signature) for path, signature in document["inputs"]]
            fingerprint = Fingerprint.from_dict(document)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing, or damaged: resolve again
        if any(_signature(path) != signature for path, signature in inputs):
            return None
        return RememberedRecipe(fingerprint, document.get("fallback_reason"))

    def remember(
        self,
        key: str | None,
        recipe: RememberedRecipe,
        inputs: list[str] | None,
    ) -> None:
        """Store a resolution. ``inputs`` are the files it read; None: it cannot be
        remembered (its result depends on state we cannot check by a ``stat``)."""
        if key is None or inputs is None:
            return
        document = {
            "format": MEMO_FORMAT,
            **recipe.fingerprint.to_dict(),
            "fallback_reason": recipe.fallback_reason,
            "inputs": [[path, _signature(path)] for path in sorted(set(inputs))],
        }
        # A memo is a convenience: a read-only or full cache directory costs only the shortcut.
        with contextlib.suppress(OSError):
            self.directory.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                self.directory / f"{key}.json", json.dumps(document, sort_keys=True, indent=1)
            )

    def forget(self, key: str | None) -> None:
        if key is not None:
            with contextlib.suppress(OSError):
                (self.directory / f"{key}.json").unlink()


def _signature(path: str) -> list[int] | None:
    """(size, mtime_ns, inode) of a file, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _machine() -> dict | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    driver = None
    with contextlib.suppress(OSError):
        driver = Path("/proc/driver/nvidia/version").read_text()
    return {
        "platform": platform.platform(),
        "cpu_flags": sorted(set(flags) & set(_CPU_FLAGS)),
        "nvidia_devices": sorted(glob.glob("/dev/nvidia*")),
        "nvidia_driver": driver,
    }
