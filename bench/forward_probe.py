"""Watch headstart's forward pass from a benchmark: how it was built, how each batch went.

:class:`ForwardRecord` holds what one :class:`~headstart.models.embedder.Embedder` did: its
precision, memory format, whether batches ran compiled, the torch thread count of the calling
thread at each batch, and the time each batch took (on CPU, where ``submit`` returns with the
vectors done; on CUDA it would time the launch only). :func:`recording` puts a recording
Embedder in place of the runner's own for the length of a ``with`` block, so a benchmark sees
the very forward pass ``extract()`` ran, without changing it.

    record = ForwardRecord()
    with recording(record):
        extract([...], options, cache)
    print(record.describe(), record.steady_rate())
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from headstart.models import embedder as embedder_module
from headstart.models.embedder import Embedder, PendingEmbedding

__all__ = ["ForwardRecord", "memory_format", "recording", "recording_embedder"]


@dataclass
class ForwardRecord:
    """What one Embedder was built with and did, batch by batch."""

    precision: str = ""
    memory_format: str = ""
    threads: set[int] = field(default_factory=set)
    # (images, seconds, ran compiled) per submitted batch, in order.
    batches: list[tuple[int, float, bool]] = field(default_factory=list)

    @property
    def compiled(self) -> bool:
        """Whether the last batch ran through the compiled graph."""
        return bool(self.batches) and self.batches[-1][2]

    @property
    def batch_size(self) -> int:
        return max((images for images, _, _ in self.batches), default=0)

    def steady_rate(self) -> float:
        """Images/s of the full batches after warm-up: without the first batch, the batches run
        eager before compiling, and the batch that compiled."""
        first_compiled = next((i for i, b in enumerate(self.batches) if b[2]), None)
        start = 1 if first_compiled is None else first_compiled + 1
        steady = [b for b in self.batches[start:] if b[0] == self.batch_size]
        seconds = sum(b[1] for b in steady)
        return sum(b[0] for b in steady) / seconds if seconds > 0 else float("nan")

    def describe(self) -> str:
        threads = ",".join(str(t) for t in sorted(self.threads)) or "?"
        return (
            f"{self.precision}, {'compiled' if self.compiled else 'eager'}, "
            f"{self.memory_format}, {threads} threads, batch {self.batch_size}"
        )

    def recipe(self) -> tuple[str, bool, str, frozenset[int], int]:
        """The fields that must agree for two forward passes to be the same."""
        return (
            self.precision,
            self.compiled,
            self.memory_format,
            frozenset(self.threads),
            self.batch_size,
        )


def memory_format(module: nn.Module) -> str:
    """How the module's 4-d weights (convolutions) are laid out."""
    weights = [p for p in module.parameters() if p.ndim == 4]
    if not weights:
        return "no 4-d weights"
    if all(p.is_contiguous(memory_format=torch.channels_last) for p in weights):
        return "channels-last"
    if all(p.is_contiguous() for p in weights):
        return "NCHW"
    return "mixed layout"


def recording_embedder(record: ForwardRecord) -> type[Embedder]:
    """An Embedder class that fills ``record`` and otherwise behaves exactly like Embedder."""

    class RecordingEmbedder(Embedder):
        def __init__(self, model: nn.Module, *args, **kwargs) -> None:
            super().__init__(model, *args, **kwargs)
            record.precision = self.precision
            record.memory_format = memory_format(model)  # Embedder converts it in place

        def submit(self, pixels: torch.Tensor) -> PendingEmbedding:
            # CPU forward passes run in the caller's thread with its intra-op thread count.
            record.threads.add(torch.get_num_threads())
            began = time.perf_counter()
            pending = super().submit(pixels)  # on CPU it returns when the vectors are done
            seconds = time.perf_counter() - began
            record.batches.append((len(pixels), seconds, self.compiled))
            return pending

    return RecordingEmbedder


@contextlib.contextmanager
def recording(record: ForwardRecord) -> Iterator[None]:
    """Within the block, ``extract()`` builds its Embedder as a recording one (the runner
    imports the class from its module when a run starts embedding)."""
    original = embedder_module.Embedder
    embedder_module.Embedder = recording_embedder(record)
    try:
        yield
    finally:
        embedder_module.Embedder = original
