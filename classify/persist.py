"""Saved heads: a directory of ``head.json`` and ``arrays.npz``; loading never runs code.

``head.json`` names the head type, its hyper-parameters, classes, metrics and the fingerprint
of the embeddings it was trained on, plus the SHA-256 of ``arrays.npz``. Loading checks that
hash, reads the arrays with ``allow_pickle=False``, rebuilds the head from the registry and
checks it answers with the right shape; anything else is refused with a reason.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart import __version__
from headstart.atomic import atomic_path, write_text_atomic
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import file_key
from headstart.classify.heads import Head, get_head
from headstart.errors import HeadstartError

__all__ = ["HEAD_DOCUMENT", "HEAD_FORMAT", "LoadedHead", "load_head", "save_head"]

HEAD_FORMAT = "headstart-head/1"
HEAD_DOCUMENT, _ARRAYS = "head.json", "arrays.npz"


@dataclass(frozen=True)
class LoadedHead:
    head: Head
    fingerprint: Fingerprint
    document: dict[str, Any]


def save_head(
    head: Head,
    directory: str | os.PathLike[str],
    *,
    fingerprint: Fingerprint,
    metrics: dict[str, Any] | None = None,
    notes: dict[str, Any] | None = None,
) -> Path:
    """Write ``head`` to ``directory``; ``head.json`` is written last, so it marks completeness."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays_path = directory / _ARRAYS
    with atomic_path(arrays_path) as temporary:
        np.savez(temporary, **head.fitted_arrays())
    document = {
        "format": HEAD_FORMAT,
        "head": head.head_name,
        "params": head.get_params(),
        "classes": np.asarray(head.classes_).tolist(),
        "n_features": int(head.n_features_in_),
        "metrics": metrics or {},
        "notes": notes or {},
        "fingerprint": fingerprint.to_dict(),
        "arrays_sha256": file_key(str(arrays_path)),
        "created_unix": time.time(),
        "headstart_version": __version__,
    }
    write_text_atomic(directory / HEAD_DOCUMENT, json.dumps(document, indent=2) + "\n")
    return directory


def load_head(
    directory: str | os.PathLike[str], fingerprint: Fingerprint | str | None = None
) -> LoadedHead:
    """Load a saved head; refuse it if it is damaged, altered, or (when ``fingerprint``, a
    record or an id, is given) trained on other embeddings."""
    directory = Path(directory)
    try:
        document = json.loads((directory / HEAD_DOCUMENT).read_text())
    except FileNotFoundError:
        raise HeadstartError(f"{directory} is not a saved head (no {HEAD_DOCUMENT})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HeadstartError(f"{directory / HEAD_DOCUMENT} is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != HEAD_FORMAT:
        raise HeadstartError(f"{directory} holds no {HEAD_FORMAT} head")
    arrays_path = directory / _ARRAYS
    if not arrays_path.is_file() or file_key(str(arrays_path)) != document.get("arrays_sha256"):
        raise HeadstartError(
            f"{arrays_path} does not match {HEAD_DOCUMENT} (altered or damaged); "
            "refusing to load it"
        )
    recorded = Fingerprint.recorded_in(document, str(directory / HEAD_DOCUMENT))
    wanted = fingerprint.id if isinstance(fingerprint, Fingerprint) else fingerprint
    if wanted is not None and wanted != recorded.id:
        what = (
            f"head vs these: {'; '.join(recorded.differences(fingerprint))}"
            if isinstance(fingerprint, Fingerprint)
            else recorded.describe()
        )
        raise HeadstartError(
            f"this head was trained on embeddings {recorded.id}, not {wanted} ({what}); "
            "embed with the same model, weights, layer and precision"
        )
    head = _rebuild(document, arrays_path)
    return LoadedHead(head, recorded, document)


def _rebuild(document: dict[str, Any], arrays_path: Path) -> Head:
    cls = get_head(str(document.get("head")))
    params = document.get("params")
    allowed = set(cls().get_params())
    if not isinstance(params, dict) or not set(params) <= allowed:
        raise HeadstartError(f"{arrays_path.parent}: unexpected hyper-parameters {params!r}")
    try:
        with np.load(arrays_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        classes = np.asarray(document["classes"])
        head = cls.from_arrays(params, classes, arrays)
        probe = head.predict_proba(np.zeros((1, int(document["n_features"])), np.float32))
    except (KeyError, ValueError, TypeError, IndexError, HeadstartError) as exc:
        raise HeadstartError(
            f"{arrays_path.parent} is not a usable {cls.head_name} head: {exc}"
        ) from None
    if probe.shape != (1, len(classes)):
        raise HeadstartError(f"{arrays_path.parent}: arrays do not fit {len(classes)} classes")
    return head
