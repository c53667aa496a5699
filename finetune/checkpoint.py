"""Run checkpoints: everything needed to continue a fine-tuning run exactly where it stopped.

A checkpoint holds only tensors and plain containers, is written under a temporary name and
renamed into place (a crash mid-write leaves the previous one intact), and is read with
``torch.load(weights_only=True)``, so opening one never runs code from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from headstart.atomic import atomic_path
from headstart.errors import HeadstartError
from headstart.models.checkpoints import load_tensors_file

__all__ = ["load_state", "save_state"]


def save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise HeadstartError(f"no checkpoint at {path}; nothing to resume")
    state = load_tensors_file(path)
    if not isinstance(state, dict):
        raise HeadstartError(f"{path} is not a headstart fine-tuning checkpoint")
    return state
