"""A memory budget for training: parsed from ``--max-memory``, checked before work starts, and
turned into block sizes.

The budget bounds the whole process, so what the process already holds (the interpreter, torch,
the cache's view) is measured and subtracted; what is left pays for a head's fixed state (a
covariance, coefficients, the optimiser's history) and one block of rows in flight. A head that
needs every vector in memory says so through :meth:`MemoryBudget.require` before it allocates.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from headstart.errors import HeadstartError
from headstart.sizes import format_size

__all__ = [
    "MIN_BLOCK_ROWS",
    "MemoryBudget",
    "process_rss",
    "return_freed_blocks",
]

logger = logging.getLogger(__name__)

MIN_BLOCK_ROWS = 256  # below this, per-block overheads (HDF5 reads, kernel launches) dominate
MAX_BLOCK_ROWS = 65536  # beyond this a bigger block buys nothing and delays the first result
_MMAP_THRESHOLD = 1 << 20  # allocations above 1 MB are mapped, and unmapped when freed
_DEFAULT_SHARE = 0.5  # of the memory available when no budget is given


def process_rss() -> int:
    """This process's resident memory now, in bytes (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def return_freed_blocks() -> None:
    """Make this process give freed blocks back to the system at once (glibc only; a no-op
    elsewhere). For the process that owns a budget: its CLI command calls this first.

    glibc serves a large allocation by mmap and returns it when freed, but after the first
    such free it raises its threshold to that size, and from then on blocks of that size come
    from the heap, where they stay resident after use. A streaming solver allocates and frees
    the same few-MB blocks thousands of times; with the threshold fixed, its resident memory
    stays at one block instead of creeping up by fragments.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, _MMAP_THRESHOLD)
    mallopt(m_trim_threshold, _MMAP_THRESHOLD)


def _available_memory() -> int:
    """Memory the system can give without swapping (MemAvailable), or all physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the whole process may hold. ``given`` says whether the user chose them."""

    total: int
    given: bool = True

    @classmethod
    def of(cls, max_memory: int | None) -> MemoryBudget:
        """The given budget, or a safe share of what the machine has available now."""
        if max_memory is not None:
            return cls(int(max_memory))
        return cls(int(_available_memory() * _DEFAULT_SHARE) + process_rss(), given=False)

    def spare(self) -> int:
        """What is left of the budget beyond what the process already holds."""
        return self.total - process_rss()

    def _option(self) -> str:
        return "--max-memory" if self.given else "the default --max-memory (half the free memory)"

    def require(self, need: int, what: str, instead: str = "") -> None:
        """Refuse, in one line, work that needs ``need`` bytes beyond what is held now."""
        spare = self.spare()
        if need > spare:
            advice = f"; {instead}" if instead else ""
            raise HeadstartError(
                f"{what} needs about {format_size(need)} but {self._option()} "
                f"{format_size(self.total)} leaves {format_size(max(spare, 0))} beyond the "
                f"{format_size(self.total - spare)} already in use{advice}"
            )

    def block_rows(self, fixed: int, per_row: int, what: str) -> int:
        """Rows per block once ``fixed`` bytes are set aside, each row costing ``per_row``
        bytes in flight; refused when not even :data:`MIN_BLOCK_ROWS` rows fit."""
        self.require(fixed + MIN_BLOCK_ROWS * per_row, what, "give a larger --max-memory")
        # Half of what is left: allocators round up and free lazily, so leave them room.
        rows = (self.spare() - fixed) // 2 // max(per_row, 1)
        rows = int(min(max(rows, MIN_BLOCK_ROWS), MAX_BLOCK_ROWS))
        logger.debug("%s: %d rows a block (%d B a row, %d B fixed)", what, rows, per_row, fixed)
        return rows
