"""Saved heads: a directory of ``head.json`` and ``arrays.npz``; loading never runs code.

``head.json`` names the head type, its hyper-parameters, classes, metrics and the fingerprint
of the embeddings it was trained on, plus the SHA-256 of ``arrays.npz``. Loading checks that
hash, reads the arrays with ``allow_pickle=False``, rebuilds the head from the registry and
checks it answers with the right shape; anything else is refused with a reason.

``train`` also records, in ``arrays.npz`` beside the head's own arrays, the sorted 64-bit
prefixes of its training images' content keys (:mod:`~headstart.classify.overlap`), so
``evaluate`` and ``report`` can say which evaluation images it was trained on. They are read
only when asked for (:func:`training_key_prefixes`); a head saved without them loads as before.
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

__all__ = [
    "HEAD_DOCUMENT",
    "HEAD_FORMAT",
    "LoadedHead",
    "load_head",
    "save_head",
    "training_key_prefixes",
]

HEAD_FORMAT = "headstart-head/1"
HEAD_DOCUMENT, _ARRAYS = "head.json", "arrays.npz"
# The member of arrays.npz holding the training key prefixes: a name no head's array takes.
_TRAINING_KEYS = "_training_key_prefixes"


@dataclass(frozen=True)
class LoadedHead:
    head: Head
    fingerprint: Fingerprint
    document: dict[str, Any]
    directory: Path | None = None


def save_head(
    head: Head,
    directory: str | os.PathLike[str],
    *,
    fingerprint: Fingerprint,
    metrics: dict[str, Any] | None = None,
    notes: dict[str, Any] | None = None,
    training_keys: np.ndarray | None = None,
) -> Path:
    """Write ``head`` to ``directory``; ``head.json`` is written last, so it marks completeness.

    ``training_keys``: the sorted uint64 key prefixes of the images the head was trained on
    (:func:`~headstart.classify.overlap.training_key_prefixes`); None records nothing, and
    overlap with later evaluations is then unknown."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays_path = directory / _ARRAYS
    arrays = dict(head.fitted_arrays())
    if _TRAINING_KEYS in arrays:
        raise ValueError(f"a head's arrays may not be named {_TRAINING_KEYS}")
    if training_keys is not None:
        arrays[_TRAINING_KEYS] = np.asarray(training_keys, dtype=np.uint64)
    with atomic_path(arrays_path) as temporary:
        np.savez(temporary, **arrays)
    document = {
        "format": HEAD_FORMAT,
        "head": head.head_name,
        "params": head.get_params(),
        "classes": np.asarray(head.classes_).tolist(),
        "n_features": int(head.n_features_in_),
        "metrics": metrics or {},
        "notes": notes or {},
        "fingerprint": fingerprint.to_dict(),
        # Recorded here too, so a reader knows without opening the arrays whether they are.
        "training_images": None if training_keys is None else len(training_keys),
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
    return LoadedHead(head, recorded, document, directory)


def training_key_prefixes(loaded: LoadedHead) -> np.ndarray | None:
    """The sorted uint64 prefixes of the content keys of the images ``loaded`` was trained
    on; None when its head was saved without them (before they were recorded, or fitted on
    arrays). Read on demand: a service that loads a head never holds them."""
    count = loaded.document.get("training_images")
    if count is None or loaded.directory is None:
        return None
    arrays_path = loaded.directory / _ARRAYS
    try:
        with np.load(arrays_path, allow_pickle=False) as stored:
            prefixes = stored[_TRAINING_KEYS]
    except (OSError, KeyError, ValueError) as exc:
        raise HeadstartError(f"{arrays_path}: cannot read its training keys ({exc})") from None
    if prefixes.dtype != np.uint64 or prefixes.ndim != 1 or len(prefixes) != count:
        raise HeadstartError(f"{arrays_path}: its training keys do not match {HEAD_DOCUMENT}")
    return prefixes


def _rebuild(document: dict[str, Any], arrays_path: Path) -> Head:
    cls = get_head(str(document.get("head")))
    params = document.get("params")
    allowed = set(cls().get_params())
    if not isinstance(params, dict) or not set(params) <= allowed:
        raise HeadstartError(f"{arrays_path.parent}: unexpected hyper-parameters {params!r}")
    try:
        with np.load(arrays_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files if name != _TRAINING_KEYS}
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
