"""Where an extraction run spends its time: read, decode, forward and write, in seconds.

``read``, ``forward`` and ``write`` take turns in the main process, so they add up to at most
the run's wall time and the largest of them bounds the run; ``read`` is time spent waiting for
the loader. ``decode`` runs in the loader's worker processes alongside them and is summed over
the workers (with no workers it happens in the main process, inside ``read``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["STAGES", "StageClock", "bounding_stage", "describe_stages"]

STAGES = ("read", "decode", "forward", "write")
# The stages that share the main process's time, one after the other.
_SEQUENTIAL = ("read", "forward", "write")

T = TypeVar("T")
_END = object()


class StageClock:
    """Adds the seconds spent in each stage to ``seconds`` (a summary's stage_seconds)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        """Counts the block's time to ``stage``, also when it raises."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - began)

    def timed(self, stage: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, with the wait for each one counted to ``stage``."""
        iterator = iter(items)
        while True:
            with self.timing(stage):
                item = next(iterator, _END)
            if item is _END:
                return
            yield item


def bounding_stage(seconds: Mapping[str, float]) -> str:
    """The main-process stage that took longest: the one a faster run would speed up first."""
    return max(_SEQUENTIAL, key=lambda stage: seconds.get(stage, 0.0))


def describe_stages(seconds: Mapping[str, float], workers: int) -> str:
    """One line, e.g. ``stages: read 1.2 s · decode 3.4 s (2 workers, summed) · forward
    5.6 s · write 0.1 s; forward bounds this run``."""
    if workers == 0:
        where = "in the main process, within read"
    else:
        where = "1 worker" if workers == 1 else f"{workers} workers, summed"
    times = [
        f"{stage} {seconds.get(stage, 0.0):.1f} s" + (f" ({where})" if stage == "decode" else "")
        for stage in STAGES
    ]
    return f"stages: {' · '.join(times)}; {bounding_stage(seconds)} bounds this run"
