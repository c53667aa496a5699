"""Zero-shot heads: a classifier from class names alone, through an image-text model.

Each class's weight vector is its prompt ensemble (CLIP's recipe): every template filled with
the class name, encoded by the text tower of the model that made the image embeddings, each
L2-normalised, averaged and normalised again. Scores are the model's own logits,
``logit_scale * normalise(x) . t_c + bias`` (the bias is SigLIP's, 0 for CLIP), and
``predict_proba`` is their softmax. The head is stored like any linear head (``coef`` =
``logit_scale * t``, ``intercept``), so evaluate, predict, reports and the service use it as
they use any other.

A class's prompt name is its label with ``_`` read as a space (``golden_retriever`` is
prompted as "a photo of a golden retriever."); the label itself stays the class.

It is built, not fitted on images: :func:`zeroshot_head` encodes the prompts (through the text
cache, so each is encoded once per fingerprint); ``ZeroShotHead.fit`` refuses.

Example:
    >>> head = zeroshot_head(["cat", "dog"], fingerprint, ".headstart")  # doctest: +SKIP
    >>> head.predict_proba(X).shape
    (len(X), 2)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.cache.texts import LogitScale
from headstart.classify.heads import HeadOption, LogitHead, register_head
from headstart.device import AUTO
from headstart.errors import HeadstartError

if TYPE_CHECKING:
    from headstart.classify.sweep import LeaderboardRow
    from headstart.extract.text import TextEncoder

__all__ = [
    "PROMPT_SETS",
    "ZeroShotHead",
    "prompt_name",
    "prompt_templates",
    "refuse_without_text",
    "zeroshot_head",
    "zeroshot_row",
]

#: Prompt sets by name: open_clip's ImageNet templates (``zero_shot_metadata``).
PROMPT_SETS = {
    "openai": "OPENAI_IMAGENET_TEMPLATES",  # the 80 templates of the CLIP paper
    "simple": "SIMPLE_IMAGENET_TEMPLATES",  # 7 of them (open_clip's short set)
}
_EPS = 1e-12


def prompt_templates(prompts: str) -> tuple[str, ...]:
    """The templates (each with one ``{}`` for the class name) that ``prompts`` names: a set in
    :data:`PROMPT_SETS`, or a text file with one template per line (blank lines and lines
    starting with ``#`` skipped)."""
    if prompts in PROMPT_SETS:
        try:
            from open_clip import zero_shot_metadata
        except ImportError:
            raise HeadstartError(
                "zero-shot prompt sets come with open_clip: pip install 'headstart[clip]'"
            ) from None
        return tuple(fill("{}") for fill in getattr(zero_shot_metadata, PROMPT_SETS[prompts]))
    path = Path(prompts)
    if not path.is_file():
        raise HeadstartError(
            f"--prompts takes {', '.join(PROMPT_SETS)} or a text file of templates, one a line "
            f"with {{}} for the class name; {prompts!r} is neither"
        )
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadstartError(f"cannot read prompt templates from {path}: {exc}") from None
    templates = tuple(line for line in lines if line and not line.startswith("#"))
    without = [line for line in templates if "{}" not in line]
    if not templates or without:
        what = f"{without[0]!r} has no {{}}" if without else "it has none"
        raise HeadstartError(
            f"{path} must hold templates, one a line, each with {{}} for the class name; {what}"
        )
    return templates


def prompt_name(label: str) -> str:
    """The words a class label stands for in prompts: ``_`` read as a space."""
    return " ".join(str(label).replace("_", " ").split())


@register_head("zeroshot")
class ZeroShotHead(LogitHead):
    """Linear head on L2-normalised embeddings whose weights are the class text embeddings.

    Built by :func:`zeroshot_head` (or :meth:`from_text`), not fitted on images.
    """

    learns_from_images = False
    options = (
        HeadOption(
            "prompts",
            str,
            "Prompt templates: openai (the 80 ImageNet ones), simple, or a file of lines with {}.",
        ),
    )

    def __init__(self, prompts: str = "openai") -> None:
        self.prompts = prompts

    def fit(self, X: np.ndarray, y: np.ndarray) -> ZeroShotHead:
        raise HeadstartError(
            "a zeroshot head is built from class names by an image-text model, not fitted on "
            "images: use `headstart train --head zeroshot` or "
            "headstart.classify.zeroshot.zeroshot_head(classes, fingerprint, cache_dir)"
        )

    @classmethod
    def from_text(
        cls,
        classes: Sequence[str],
        class_embeddings: np.ndarray,
        scale: LogitScale,
        *,
        prompts: str = "openai",
    ) -> ZeroShotHead:
        """A fitted head from one (unnormalised) text embedding per class and the model's
        logit scale."""
        embeddings = np.asarray(class_embeddings, np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(classes):
            raise ValueError(f"{len(classes)} classes for embeddings of shape {embeddings.shape}")
        head = cls(prompts=prompts)
        head.classes_ = np.asarray([str(c) for c in classes])
        head.coef_ = (scale.scale * _normalise(embeddings)).astype(np.float32)
        head.intercept_ = np.full(len(classes), scale.bias or 0.0, np.float32)
        head.n_features_in_ = embeddings.shape[1]
        return head

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """The model's logits, ``logit_scale * cos(x, t_c) + bias``, shape (n, n_classes)."""
        X = self._check_features(X)
        return _normalise(X) @ self.coef_.T + self.intercept_

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.coef_, self.intercept_ = arrays["coef"], arrays["intercept"]
        self.n_features_in_ = self.coef_.shape[1]


def refuse_without_text(fingerprint: Fingerprint) -> None:
    """One line saying why a zeroshot head cannot be built on ``fingerprint``'s embeddings."""
    from headstart.extract.text import why_no_text

    reason = why_no_text(fingerprint)
    if reason is not None:
        raise HeadstartError(f"--head zeroshot needs an image-text model: {reason}")


def zeroshot_head(
    classes: Sequence[str],
    fingerprint: Fingerprint,
    cache_dir: str | os.PathLike[str],
    prompts: str = "openai",
    *,
    device: str = AUTO,
    encoder: TextEncoder | None = None,
) -> ZeroShotHead:
    """The zero-shot head of ``classes`` (labels; prompted as :func:`prompt_name` says) for
    ``fingerprint``'s embeddings. Prompts go through the text cache: encoded once."""
    from headstart.extract.text import encode_texts, logit_scale

    refuse_without_text(fingerprint)
    names = list(dict.fromkeys(str(c) for c in classes))
    if len(names) < 2:
        raise HeadstartError(f"need at least two classes, got only: {', '.join(names) or 'none'}")
    names.sort()  # the order every other head keeps its classes in (np.unique)
    templates = prompt_templates(prompts)
    texts = [t.replace("{}", prompt_name(name)) for name in names for t in templates]
    vectors = encode_texts(texts, fingerprint, cache_dir, device=device, encoder=encoder)
    ensembles = _normalise(vectors).reshape(len(names), len(templates), -1).mean(axis=1)
    scale = encoder.scale if encoder is not None else logit_scale(fingerprint, cache_dir)
    return ZeroShotHead.from_text(names, ensembles, scale, prompts=prompts)


def zeroshot_row(
    classes: Sequence[str],
    fingerprint: Fingerprint,
    cache_dir: str | os.PathLike[str],
    X_val,
    y_val: np.ndarray | None,
    *,
    prompts: str = "openai",
    device: str = AUTO,
) -> LeaderboardRow:
    """A leaderboard row: the zero-shot head built and scored on validation (arrays
    ``X_val, y_val``, or a block source as ``X_val``, read a block at a time)."""
    from headstart.classify.blocks import as_blocks
    from headstart.classify.scoring import score_blocks
    from headstart.classify.sweep import LeaderboardRow

    started = time.perf_counter()
    head = zeroshot_head(classes, fingerprint, cache_dir, prompts, device=device)
    seconds = time.perf_counter() - started
    [metrics] = score_blocks([head], as_blocks(X_val, y_val))
    note = f"{len(prompt_templates(prompts))} prompts a class, no training images"
    return LeaderboardRow("zeroshot", "prompts", prompts, metrics, seconds, head, note=note)


def _normalise(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return X / np.maximum(norms, _EPS)
