"""What an index build holds in memory, and whether a budget can hold it.

The budget is the caller's (``index build --max-memory``), or by default half of the memory
the machine has available. From it the build derives how many vectors a block reads and how
many train the quantizers; a budget that cannot hold the index's codes, one block and the
smallest training sample is refused in one line before the build starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from headstart.errors import HeadstartError
from headstart.search.spec import COMPRESSED_KINDS, LIST_GROWTH, IndexSpec
from headstart.sizes import format_size

__all__ = [
    "TRAIN_WORKSPACE",
    "BuildPlan",
    "check_least_budget",
    "default_budget",
    "left_for_build",
    "plan_build",
    "resident_bytes",
]

_MAX_BLOCK_ROWS = 65_536
_MIN_BLOCK_ROWS = 1_024
_BLOCK_SHARE = 8  # a block of vectors takes at most this fraction of the budget
_LEAST_DIM = 512  # the narrowest embeddings the least block is sized for
# k-means' own buffers beside its sample: FAISS computes distances 4,096 queries by 1,024
# centroids at a time (16 MB of float32). A 32k-vector build under a tight budget peaked
# 28 MB past a plan that left them out (and normalised its sample in a second copy).
TRAIN_WORKSPACE = 16 << 20
_ID_BYTES = 8  # FAISS keeps an int64 id per vector in each inverted list


@dataclass(frozen=True)
class BuildPlan:
    """How a build of ``n`` vectors works within its budget."""

    budget: int
    block_rows: int  # vectors read, normalised and added at a time
    train_rows: int  # vectors the quantizers train on (0 for flat and HNSW)
    resident: int  # bytes the finished index holds


def default_budget() -> int:
    """Half the memory available now: the rest stays for the system and other work."""
    import psutil

    return psutil.virtual_memory().available // 2


def left_for_build(budget: int) -> int:
    """What a budget for the whole process leaves for the index once what the process already
    holds (Python, torch, FAISS, the items being indexed) is counted; refuses, in one line, a
    budget that does not even cover that."""
    import psutil

    held = psutil.Process().memory_info().rss
    if held >= budget:
        raise HeadstartError(
            f"the budget of {format_size(budget)} is less than this process already holds "
            f"({format_size(held)}: Python, torch and FAISS); give a larger --max-memory"
        )
    return budget - held


def check_least_budget(budget: int) -> None:
    """Refuse, in one line and before any work, a budget that cannot hold even the smallest
    build: what the process holds once torch and FAISS are loaded (as any build loads them),
    plus one block of the least size. Whether it holds this collection's build is known once
    the collection is listed (:func:`plan_build`)."""
    import faiss  # noqa: F401 - loaded now so that what the process holds counts them
    import torch  # noqa: F401

    least_block = _MIN_BLOCK_ROWS * _LEAST_DIM * 4
    left = left_for_build(budget)
    if left < least_block:
        raise HeadstartError(
            f"the budget of {format_size(budget)} leaves {format_size(left)} beside what this "
            f"process holds (Python, torch and FAISS); an index build needs at least "
            f"{format_size(least_block)} more: give a larger --max-memory"
        )


def resident_bytes(spec: IndexSpec, n: int, d: int) -> int:
    """Bytes a built index of ``spec`` holds for ``n`` vectors of ``d`` dimensions."""
    centroids = spec.nlist * d * 4
    if spec.kind == "flat":
        return n * d * 4
    if spec.kind == "hnsw":
        return n * (d * 4 + 2 * spec.hnsw_m * 4)  # vectors, and about 2M links a vector
    per_vector = {"ivf": d * 4, "ivfsq": d, "ivfpq": spec.pq_m}[spec.kind] + _ID_BYTES
    return int(n * per_vector * LIST_GROWTH) + centroids


def _wanted_training(spec: IndexSpec) -> tuple[int, int]:
    """(advised, least) training vectors: FAISS advises 39 a centroid and needs one."""
    if spec.kind not in ("ivf", "ivfsq", "ivfpq"):
        return 0, 0
    centroids = max(spec.nlist, 2**spec.pq_nbits if spec.kind == "ivfpq" else 0)
    return 39 * centroids, centroids


def plan_build(spec: IndexSpec, n: int, d: int, budget: int) -> BuildPlan:
    """The block and training sizes that keep the build of ``spec`` within ``budget`` bytes;
    HeadstartError, in one line, when no sizes do."""
    resident = resident_bytes(spec, n, d)
    row = d * 4
    block_rows = max(_MIN_BLOCK_ROWS, min(_MAX_BLOCK_ROWS, budget // _BLOCK_SHARE // row))
    block_rows = min(block_rows, max(n, 1))
    advised, least = _wanted_training(spec)
    # Training happens before any vector is added: the sample shares the budget with a block.
    # SQ and PQ train their codes on the sample's residuals, which FAISS holds beside it.
    train_row = row * (2 if spec.kind in COMPRESSED_KINDS else 1)
    room = budget - block_rows * row - (TRAIN_WORKSPACE if advised else 0)
    train_rows = min(n, advised, max(room // train_row, 0)) if advised else 0
    needed = resident + block_rows * row
    if needed > budget or (advised and train_rows < min(n, least)):
        least_bytes = max(needed, min(n, least) * train_row + block_rows * row + TRAIN_WORKSPACE)
        raise HeadstartError(
            f"indexing {n} vectors of {d} dimensions as {spec.describe()} needs about "
            f"{format_size(least_bytes)}; the budget is {format_size(budget)}: give a larger "
            "--max-memory or a more compressed --kind (ivfsq, ivfpq)"
        )
    return BuildPlan(budget, block_rows, train_rows, resident)
