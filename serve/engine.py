"""What the service computes with: the backbone (rebuilt from the head's fingerprint), the head,
and optionally a nearest-neighbor index, checked to belong together before anything loads.
When the fingerprint is an image-text model's, the model's text tower too, for search by text.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from headstart.cache.fingerprint import Fingerprint
from headstart.classify.heads import Head
from headstart.classify.persist import load_head
from headstart.device import AUTO
from headstart.errors import HeadstartError, first_line
from headstart.extract import recipe_for_fingerprint
from headstart.extract.text import TextEncoder, why_no_text
from headstart.models.decode import decode_pixels
from headstart.models.embedder import Embedder, build_embedder
from headstart.models.preprocess import Preprocess, to_uint8_tensor
from headstart.pathnames import printable
from headstart.search.exact import l2_normalize
from headstart.search.loaded import LoadedIndex
from headstart.search.store import load_index

__all__ = ["Engine", "check_artifacts", "load_engine"]

log = logging.getLogger(__name__)

# Query texts whose embeddings a service keeps in memory (a few MB at 1,024 wide).
TEXT_MEMORY = 1024


@dataclass
class Engine:
    """A loaded model, head and index. ``embed`` may be called from one thread at a time;
    ``embed_text`` from any (the text tower is a model of its own, used one call at a time).

    ``text_encoder`` is None when the model cannot embed text, and ``no_text`` says why."""

    embedder: Embedder
    preprocess: Preprocess
    head: Head
    fingerprint: Fingerprint
    index: LoadedIndex | None
    dim: int
    text_encoder: TextEncoder | None = None
    no_text: str | None = None
    _text_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _texts: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    @functools.cached_property
    def class_names(self) -> list[str]:
        """The head's classes as answers show them: a folder name that is not UTF-8 keeps its
        odd bytes as ``\\xNN`` (JSON cannot carry them)."""
        return [printable(str(name)) for name in self.head.classes_]

    def decode(self, data: bytes) -> torch.Tensor:
        """Image bytes -> (3, H, W) uint8, exactly as extraction prepares them."""
        image = decode_pixels(data, min_side=self.preprocess.resize_size)
        return to_uint8_tensor(image, self.preprocess)

    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        return self.embedder(pixels)

    def classify(self, vectors: np.ndarray) -> np.ndarray:
        return self.head.predict_proba(vectors)

    def embed_text(self, text: str) -> np.ndarray:
        """(1, dim) float32: the text's embedding, by the model's text tower. The last
        ``TEXT_MEMORY`` texts asked are kept, so a repeated query encodes nothing."""
        if self.text_encoder is None:
            raise LookupError(self.no_text or "this model cannot embed text")
        with self._text_lock:
            vector = self._texts.get(text)
            if vector is None:
                vector = self.text_encoder.encode([text])
                self._texts[text] = vector
                if len(self._texts) > TEXT_MEMORY:
                    self._texts.popitem(last=False)
            else:
                self._texts.move_to_end(text)
            return vector

    def neighbors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            raise LookupError("no index loaded")
        return self.index.search(l2_normalize(vectors), k)


def check_artifacts(head_dir: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None):
    """Load the head (and index) and refuse a pair made from different embeddings."""
    loaded = load_head(head_dir)
    index = None
    if index_dir is not None:
        index = load_index(index_dir)
        if index.fingerprint.id != loaded.fingerprint.id:
            differences = "; ".join(index.fingerprint.differences(loaded.fingerprint))
            raise HeadstartError(
                f"the index in {index_dir} holds embeddings {index.fingerprint.id} but the head "
                f"in {head_dir} was trained on {loaded.fingerprint.id} (index vs head: "
                f"{differences}); build both from the same model, weights, layer and precision"
            )
    return loaded, index


def load_engine(
    head_dir: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None, device: str = AUTO
) -> Engine:
    """Build the backbone the head was trained on, and warm it up."""
    loaded, index = check_artifacts(head_dir, index_dir)
    recipe = recipe_for_fingerprint(loaded.fingerprint, device=device)
    # Request batches vary in size, and compiling per size would stall requests: stay eager.
    embedder = build_embedder(recipe)
    crop = recipe.preprocess.crop_size
    warm = embedder(torch.zeros((2, 3, crop, crop), dtype=torch.uint8))
    log.info("model %s ready on %s (dim %d)", recipe.backbone.name, recipe.device, warm.shape[1])
    text_encoder, no_text = _text_side(loaded.fingerprint, device)
    return Engine(
        embedder,
        recipe.preprocess,
        loaded.head,
        loaded.fingerprint,
        index,
        warm.shape[1],
        text_encoder=text_encoder,
        no_text=no_text,
    )


def _text_side(fingerprint: Fingerprint, device: str) -> tuple[TextEncoder | None, str | None]:
    """The model's text tower, warmed up, or None and why not. A text tower that cannot be
    rebuilt (a checkpoint of the image tower alone) costs search by text, not the service."""
    reason = why_no_text(fingerprint)
    if reason is not None:
        return None, reason
    try:
        encoder = TextEncoder.from_fingerprint(fingerprint, device=device, batch_size=1)
    except HeadstartError as exc:
        log.warning("search by text is off: %s", first_line(exc))
        return None, first_line(exc)
    encoder.encode(["warm-up"])
    log.info("text tower ready: search by text is on")
    return encoder, None


def public_model_name(fingerprint: Fingerprint) -> str:
    """The model's name without server paths (for TorchScript files and factory files)."""
    name = str(fingerprint.recipe.get("model", ""))
    family, _, rest = name.partition(":")
    if family in ("torchscript", "python") and rest.startswith("/"):
        return f"{family}:{Path(rest.split(':')[0]).name}"
    return name
