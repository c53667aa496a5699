"""Text embeddings of image-text backbones: the other half of their joint space.

An open_clip fingerprint's image vectors and the texts :class:`TextEncoder` embeds come from
one model (the recipe in the fingerprint is rebuilt, weights and all), so
``logit_scale * normalised image . normalised text`` is the model's own score.
:func:`encode_texts` keeps what it encodes in the cache (:mod:`headstart.cache.texts`), so a
prompt set is encoded once per fingerprint.

Example:
    >>> fingerprint = EmbeddingCache(".headstart").find("6f1c")  # doctest: +SKIP
    >>> can_embed_text(fingerprint)
    True
    >>> encode_texts(["a photo of a dog", "a photo of a cat"], fingerprint, ".headstart").shape
    (2, 512)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.cache.store import EmbeddingCache
from headstart.cache.texts import LogitScale, TextCache, text_key
from headstart.device import AUTO
from headstart.errors import HeadstartError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch and open_clip are imported where a model is built: `headstart info` asks
# can_embed_text of every fingerprint and must stay fast.

__all__ = [
    "TEXT_BATCH",
    "LogitScale",
    "TextEncoder",
    "can_embed_text",
    "encode_texts",
    "logit_scale",
    "why_no_text",
]

TEXT_BATCH = 256
_IMAGE_TEXT_PREFIX = "open_clip:"


def why_no_text(fingerprint: Fingerprint) -> str | None:
    """Why the embeddings of ``fingerprint`` cannot be compared with texts; None when they can.

    Example:
        >>> why_no_text(Fingerprint({"model": "torchvision:resnet18", "layer": None}))
        'torchvision:resnet18 is an image-only model (text needs --model open_clip:ARCH/TAG)'
    """
    model = str(fingerprint.recipe.get("model"))
    if not model.startswith(_IMAGE_TEXT_PREFIX):
        return f"{model} is an image-only model (text needs --model open_clip:ARCH/TAG)"
    if fingerprint.recipe.get("layer"):
        layer = fingerprint.recipe["layer"]
        return f"embeddings from --layer {layer} are not in the model's image-text space"
    return None


def can_embed_text(fingerprint: Fingerprint) -> bool:
    """Whether texts can be embedded into the space of ``fingerprint``'s image embeddings."""
    return why_no_text(fingerprint) is None


class TextEncoder:
    """Encodes strings with an image-text model's text tower, in batches, on one device.

    ``logit_scale`` is the model's ``exp(logit_scale)`` (and ``logit_bias`` its bias, SigLIP's,
    or None): zero-shot scores are ``logit_scale * normalised image . normalised text``.

    Example:
        >>> encoder = TextEncoder.from_fingerprint(fingerprint)  # doctest: +SKIP
        >>> encoder.encode(["a red circle"]).shape
        (1, 512)
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        device: torch.device,
        precision: str,
        *,
        batch_size: int = TEXT_BATCH,
        fingerprint: Fingerprint | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.fingerprint = fingerprint
        bias = getattr(model, "logit_bias", None)
        self.logit_scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
        self.logit_bias = None if bias is None else float(bias.detach().reshape(-1)[0])

    @classmethod
    def from_fingerprint(
        cls, fingerprint: Fingerprint, *, device: str = AUTO, batch_size: int = TEXT_BATCH
    ) -> TextEncoder:
        """The text side of the model that made ``fingerprint``'s embeddings, rebuilt from its
        recipe; refuses an image-only fingerprint, or one that can no longer be reproduced."""
        from headstart.extract.recipe import recipe_for_fingerprint
        from headstart.models._open_clip import image_text_model, tokenizer_for

        reason = why_no_text(fingerprint)
        if reason is not None:
            raise HeadstartError(f"fingerprint {fingerprint.id} cannot embed text: {reason}")
        recipe = recipe_for_fingerprint(fingerprint, device=device)
        model = image_text_model(recipe.backbone)
        tokenizer = tokenizer_for(recipe.backbone)
        if hasattr(model, "visual"):
            model.visual = None  # texts only: no need to hold the image tower on the device
        return cls(
            model,
            tokenizer,
            recipe.device,
            recipe.precision,
            batch_size=batch_size,
            fingerprint=fingerprint,
        )

    @property
    def scale(self) -> LogitScale:
        return LogitScale(self.logit_scale, self.logit_bias)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dim) text features, projected and not normalised (as ``encode_text``)."""
        import torch

        from headstart.device import autocast

        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        parts = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size]))
            with torch.inference_mode(), autocast(self.device, self.precision):
                out = self.model.encode_text(tokens.to(self.device), normalize=False)
            parts.append(out.float().cpu())
        if not parts:
            return self.encode([""])[:0]  # (0, dim)
        return torch.cat(parts).numpy()


def encode_texts(
    texts: Sequence[str],
    fingerprint: Fingerprint,
    cache_dir: str | os.PathLike[str],
    *,
    device: str = AUTO,
    encoder: TextEncoder | None = None,
) -> np.ndarray:
    """Text embeddings for ``fingerprint``, float32 (n, dim) in the order given: cached rows
    are read, and only the texts the cache lacks are encoded (then cached).

    ``encoder`` (from :meth:`TextEncoder.from_fingerprint`) saves rebuilding the model across
    calls; it is only built, from the fingerprint's recipe, when a text is missing.
    """
    reason = why_no_text(fingerprint)
    if reason is not None:
        raise HeadstartError(f"fingerprint {fingerprint.id} cannot embed text: {reason}")
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a list of strings, not one string")
    if encoder is not None and getattr(encoder.fingerprint, "id", None) != fingerprint.id:
        raise ValueError(
            f"the encoder embeds for {getattr(encoder.fingerprint, 'id', None)}, "
            f"not for {fingerprint.id}"
        )
    cache = TextCache(cache_dir, fingerprint)
    vectors, found = cache.lookup([text_key(t) for t in texts])
    if found.all():
        return vectors
    missing = list(dict.fromkeys(t for t, hit in zip(texts, found, strict=True) if not hit))
    encoder = encoder or TextEncoder.from_fingerprint(fingerprint, device=device)
    fresh = encoder.encode(missing)
    if vectors.shape[1] != fresh.shape[1]:
        if found.any():
            raise HeadstartError(
                f"the cached text embeddings in {cache.directory} are {vectors.shape[1]} wide, "
                f"the model's {fresh.shape[1]}; move that directory away"
            )
        vectors = np.zeros((len(texts), fresh.shape[1]), np.float32)  # nothing was cached
    EmbeddingCache(cache_dir).create(fingerprint)  # its fingerprint.json, if images have none yet
    cache.add(missing, fresh, encoder.scale)
    rows = {text: row for text, row in zip(missing, fresh, strict=True)}
    for position in np.flatnonzero(~found):
        vectors[position] = rows[texts[position]]
    return vectors


def logit_scale(
    fingerprint: Fingerprint, cache_dir: str | os.PathLike[str] | None = None, *, device: str = AUTO
) -> LogitScale:
    """The model's logit scale (and bias): from the text cache when texts were cached there,
    else from the model itself."""
    reason = why_no_text(fingerprint)
    if reason is not None:
        raise HeadstartError(f"fingerprint {fingerprint.id} cannot embed text: {reason}")
    recorded = TextCache(cache_dir, fingerprint).logit_scale() if cache_dir is not None else None
    return recorded or TextEncoder.from_fingerprint(fingerprint, device=device).scale
