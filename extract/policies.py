"""The runner's decisions, apart from its plumbing: which rows of a batch to embed, which
failures to show, and whether compiling the model pays off."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from headstart.cache.catalog import FailureRecord
from headstart.cache.keys import KeyMembership

if TYPE_CHECKING:
    from headstart.extract.runner import ExtractSummary

__all__ = [
    "FAILURE_EXAMPLES",
    "CompilePolicy",
    "compile_pays_off",
    "fresh_rows",
    "record_failures",
]

FAILURE_EXAMPLES = 10
# torch.compile costs 20-40 s once per process and pays off for heavy per-image compute
# (oneDNN weight prepacking, BatchNorm folding). Decided on the measured eager rate: compile when
# images take at least this long each and the rest of the run would take at least this long.
# On a GPU every image is quick, and what compiling removes (kernel launches, through CUDA
# graphs; unfused normalisation) is a share of each batch: there only the rest of the run counts.
COMPILE_MIN_SECONDS_PER_IMAGE = 0.010
COMPILE_MIN_SECONDS_PER_IMAGE_CUDA = 0.0
COMPILE_MIN_REMAINING_SECONDS = 120.0
COMPILE_PROBE_BATCHES = 3


def fresh_rows(keys: np.ndarray, seen: KeyMembership) -> np.ndarray:
    """Mask of the keys neither stored nor embedded earlier in this run, first occurrence only
    (a file copied within one batch is embedded once)."""
    fresh = ~seen.contains(keys)
    _, first = np.unique(keys, return_index=True)
    in_batch_first = np.zeros(len(keys), dtype=bool)
    in_batch_first[first] = True
    return fresh & in_batch_first


def record_failures(
    summary: ExtractSummary, failures: Sequence[FailureRecord], limit: int = FAILURE_EXAMPLES
) -> None:
    """Count ``failures`` and keep the first ``limit`` of the run as examples to show."""
    summary.failed += len(failures)
    room = max(limit - len(summary.failure_examples), 0)
    summary.failure_examples.extend(failures[:room])


def compile_pays_off(
    seconds_per_image: float,
    images_left: int,
    min_seconds_per_image: float = COMPILE_MIN_SECONDS_PER_IMAGE,
) -> bool:
    """Whether compiling once would be repaid by the images still to embed."""
    return (
        seconds_per_image >= min_seconds_per_image
        and seconds_per_image * images_left >= COMPILE_MIN_REMAINING_SECONDS
    )


class CompilePolicy:
    """Times the eager pipeline over a few batches after the first, then decides whether
    compiling would pay off for the rest of the run."""

    def __init__(
        self,
        total: int,
        clock: Callable[[], float] = time.perf_counter,
        *,
        on_cuda: bool = False,
    ) -> None:
        self.total = total
        self.clock = clock
        self.min_seconds_per_image = (
            COMPILE_MIN_SECONDS_PER_IMAGE_CUDA if on_cuda else COMPILE_MIN_SECONDS_PER_IMAGE
        )
        self.batches = 0
        self.began: tuple[float, int] | None = None

    def decide(self, embedded: int) -> bool | None:
        """None while still measuring; then whether to compile. ``embedded``: images so far."""
        now = self.clock()
        if self.began is None:
            self.began = (now, embedded)
            return None
        self.batches += 1
        if self.batches < COMPILE_PROBE_BATCHES:
            return None
        per_image = (now - self.began[0]) / max(embedded - self.began[1], 1)
        return compile_pays_off(per_image, self.total - embedded, self.min_seconds_per_image)
