"""A fingerprint names everything that changes an embedding: model, weights, layer, pooling,
preprocessing and precision. Its id names the cache sub-directory holding those vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from headstart.errors import HeadstartError

__all__ = ["Fingerprint"]


@dataclass(frozen=True)
class Fingerprint:
    """The recipe behind a set of embeddings, and its short content hash.

    ``source`` says how to rebuild the model (the model and weights specs as given); it is kept
    beside the recipe but not hashed, since a moved weights file still holds the same weights.

    Example:
        >>> Fingerprint({"model": "torchvision:resnet50", "precision": "fp32"}).id  # doctest: +SKIP
        '6f1c0e2a9b3d4c5e'
    """

    recipe: Mapping[str, Any]
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        canonical = json.dumps(self.recipe, sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "id", hashlib.sha256(canonical.encode()).hexdigest()[:16])

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "recipe", "source"}``: how every file that records a fingerprint holds it."""
        return {"id": self.id, "recipe": dict(self.recipe), "source": dict(self.source)}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, check_id: bool = True) -> Fingerprint:
        """The fingerprint :meth:`to_dict` wrote (extra keys beside it are ignored).

        Raises KeyError without a recipe, and ValueError when ``check_id`` and the recorded id
        is not the recipe's hash (a damaged or edited record).
        """
        fingerprint = cls(document["recipe"], document.get("source") or {})
        if check_id and document.get("id") != fingerprint.id:
            raise ValueError(
                f"the record says {document.get('id')} but its recipe hashes to {fingerprint.id}"
            )
        return fingerprint

    @classmethod
    def recorded_in(cls, document: Mapping[str, Any], where: str) -> Fingerprint:
        """The checked fingerprint a saved artifact's ``document["fingerprint"]`` holds; one
        line naming ``where`` when that record is missing, damaged or edited."""
        try:
            return cls.from_dict(document["fingerprint"])
        except (KeyError, TypeError, ValueError):
            raise HeadstartError(f"{where}: the fingerprint record is inconsistent") from None

    def describe(self) -> str:
        """One line for people: model, weights, layer, precision."""
        r = self.recipe
        layer = r.get("layer") or "pre-logits"
        return f"{r.get('model')} weights={r.get('weights')} layer={layer} {r.get('precision')}"

    def differences(self, other: Fingerprint) -> list[str]:
        """What differs between two recipes, one ``field: ours vs theirs`` entry per field
        (nested fields such as ``preprocess.crop_size`` named in full), for messages that must
        say more than two descriptions that read the same.

        Example:
            >>> a = Fingerprint({"model": "m", "model_code": "sha256:4bfd00", "precision": "fp32"})
            >>> b = Fingerprint({"model": "m", "model_code": "sha256:9a1c00", "precision": "fp32"})
            >>> a.differences(b)
            ['model_code: sha256:4bfd00 vs sha256:9a1c00']
        """
        return [
            f"{name}: {_shown(ours)} vs {_shown(theirs)}"
            for name, ours, theirs in _differing(self.recipe, other.recipe, "")
        ]


_MISSING = "(none)"


def _differing(ours: Mapping[str, Any], theirs: Mapping[str, Any], prefix: str):
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, _MISSING), theirs.get(key, _MISSING)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            yield from _differing(a, b, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", a, b


def _shown(value: Any, limit: int = 48) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
