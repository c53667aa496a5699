"""The embedder: uint8 image batches in, float32 embeddings out, on one device.

Everything that makes a frozen forward pass fast lives here: inference mode, channels-last
memory, autocast at the chosen precision, optional ``torch.compile`` with weight freezing (CPU
convolutions then use prepacked oneDNN kernels), pinned host memory with non-blocking copies
on CUDA, and one batch in flight so the GPU works while the host collects the last result.
On CUDA out-of-memory the batch is split in halves and retried, and the smaller size is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from headstart.device import autocast
from headstart.errors import HeadstartError, first_line
from headstart.models.preprocess import Preprocess, normalize

if TYPE_CHECKING:
    from headstart.extract.recipe import Recipe

__all__ = ["Embedder", "PendingEmbedding", "build_embedder"]

log = logging.getLogger(__name__)


class _FromPixels(nn.Module):
    """uint8 pixels -> normalised channels-last floats -> the feature model, as one module, so
    a compiled graph fuses the normalisation into its first kernels."""

    def __init__(self, model: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = normalize(pixels, self.preprocess)
        return self.model(images.contiguous(memory_format=torch.channels_last))


@dataclass
class PendingEmbedding:
    """Vectors still being computed or copied; :meth:`result` waits for them."""

    host: torch.Tensor
    ready: torch.cuda.Event | None = None

    def result(self) -> np.ndarray:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.numpy()


class Embedder:
    """Runs a feature model on one device.

    Example:
        >>> embedder = Embedder(model, preprocess, torch.device("cpu"), "fp32")  # doctest: +SKIP
        >>> vectors = embedder(uint8_batch)  # (N, dim) float32 NumPy array
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        device: torch.device,
        precision: str,
        *,
        compile: bool = False,
    ) -> None:
        self.device = device
        self.preprocess = preprocess
        self.precision = precision
        self.max_batch: int | None = None
        model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self._model = _FromPixels(model, preprocess).to(device)
        self._compiled: nn.Module | None = None
        self._static_batch: int | None = None
        if compile:
            self.compile_now()
        if device.type == "cuda":
            # Fixed input shapes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True

    @property
    def compiled(self) -> bool:
        """Whether batches now run through ``torch.compile`` (False after it failed)."""
        return self._compiled is not None

    def compile_now(self) -> None:
        """Use ``torch.compile`` from the next batch on (compiling takes place in that batch)."""
        if self._compiled is None:
            # Freezing folds BatchNorm into convolutions and prepacks weights: the large CPU win.
            # On CUDA the graph is also replayed as a CUDA graph (the batch size is fixed by
            # padding below), which removes the launch of every kernel from every batch.
            options = {"freezing": True, "triton.cudagraphs": self.device.type == "cuda"}
            self._compiled = torch.compile(self._model, dynamic=False, options=options)

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        return self.submit(pixels).result()

    def submit(self, pixels: torch.Tensor) -> PendingEmbedding:
        """Start embedding a (N, 3, H, W) uint8 batch; on CUDA this returns before it is done."""
        total = len(pixels)
        while True:
            step = min(self.max_batch or total, total) or 1
            try:
                parts = [self._forward(pixels[i : i + step]) for i in range(0, total, step)]
                break
            except torch.cuda.OutOfMemoryError:
                if step == 1:
                    raise HeadstartError(
                        "out of GPU memory for a single image; use a smaller model or --device cpu"
                    ) from None
                self.max_batch = step // 2
                log.warning("out of GPU memory at batch %d; retrying at %d", step, self.max_batch)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        vectors = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.device.type != "cuda":
            return PendingEmbedding(vectors)
        host = vectors.to("cpu", non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return PendingEmbedding(host, ready)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        count = len(pixels)
        if self._compiled is not None:
            # A compiled graph is specialised to one batch size; pad rather than recompile.
            if self._static_batch is None or count > self._static_batch:
                self._static_batch = count
            if count < self._static_batch:
                padding = pixels.new_zeros((self._static_batch - count, *pixels.shape[1:]))
                pixels = torch.cat([pixels, padding])
        images = pixels.to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self._run_model(images)
        return out[:count].float()

    def _run_model(self, images: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            try:
                if self.device.type != "cuda":
                    return self._compiled(images)
                # A CUDA graph's output is overwritten by its next replay: each batch is a new
                # step, and its vectors are copied out before the next one starts.
                torch.compiler.cudagraph_mark_step_begin()
                return self._compiled(images).clone()
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # no C++ compiler, unsupported op: eager still works
                log.warning("torch.compile failed (%s); continuing without it", first_line(exc))
                self._compiled = None
        try:
            return self._model(images)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise HeadstartError(
                f"the model failed on a batch of shape {tuple(images.shape)}: {first_line(exc)}"
            ) from None


def build_embedder(recipe: Recipe, *, compile: bool = False) -> Embedder:
    """The recipe's feature model (loaded with its weights, cut at its layer) on its device, at
    its precision: what ``extract``, the service and the heads' verbs run images through.

    Example:
        >>> embedder = build_embedder(resolve_recipe(ExtractOptions("resnet18")))  # doctest: +SKIP
    """
    from headstart.models.features import build_feature_model

    features = build_feature_model(recipe.backbone, recipe.layer)
    return Embedder(
        features.module, recipe.preprocess, recipe.device, recipe.precision, compile=compile
    )
