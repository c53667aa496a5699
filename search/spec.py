"""Which index suits a collection: the FAISS guidelines by size, and a memory budget.

``auto`` chooses exact (flat) search below 100k vectors and an inverted file (IVF) with about
4 sqrt(n) lists above; when the float32 vectors would not fit a ``max_memory`` budget, the most
faithful code that fits: 8-bit scalar quantisation (a byte a dimension, recall@10 near 0.99)
and, below that, product quantisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from headstart.errors import HeadstartError
from headstart.search.settings import INDEX_KINDS

__all__ = [
    "COMPRESSED_KINDS",
    "FLAT_BELOW",
    "IVF_KINDS",
    "IndexSpec",
    "choose_spec",
]

COMPRESSED_KINDS = ("ivfsq", "ivfpq")
IVF_KINDS = ("ivf", *COMPRESSED_KINDS)
FLAT_BELOW = 100_000
_ID_BYTES = 8  # an IVF list keeps an int64 id a vector
# Inverted lists grow as vectors are added, by doubling their capacity: a 400,000-vector
# IVF-flat build was measured to hold 1.3 times its codes at its peak.
LIST_GROWTH = 1.3


@dataclass(frozen=True)
class IndexSpec:
    """What kind of index, and its parameters (``nprobe``/``ef_search`` are set by tuning)."""

    kind: str
    nlist: int = 0
    nprobe: int = 1
    pq_m: int = 0
    pq_nbits: int = 8
    hnsw_m: int = 32
    ef_search: int = 16

    def describe(self) -> str:
        if self.kind == "flat":
            return "flat (exact)"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}, efSearch {self.ef_search}"
        bits = f"x{self.pq_nbits}" if self.pq_nbits != 8 else ""
        code = {"ivfsq": ", SQ8", "ivfpq": f", PQ{self.pq_m}{bits}"}.get(self.kind, "")
        return f"IVF{self.nlist}{code}, nprobe {self.nprobe}"


def choose_spec(n: int, d: int, kind: str = "auto", max_memory: int | None = None) -> IndexSpec:
    """The index for ``n`` vectors of ``d`` dimensions, following the FAISS guidelines."""
    if kind not in INDEX_KINDS:
        raise HeadstartError(f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    nlist = int(2 ** round(math.log2(max(4 * math.sqrt(n), 16))))
    nlist = max(1, min(nlist, 65536, n // 39 or 1))  # FAISS wants >= 39 training points a list
    full_size = n * d * 4
    # The codes share the budget with a block of vectors being added (an eighth at most) and
    # an IVF list's int64 id a vector.
    usable = None if max_memory is None else max_memory - max_memory // 8
    if kind == "auto":
        if usable is None or n * (d * 4 + _ID_BYTES) * LIST_GROWTH <= usable:
            kind = "flat" if n < FLAT_BELOW else "ivf"
        else:
            kind = "ivfsq" if n * (d + _ID_BYTES) * LIST_GROWTH <= usable else "ivfpq"
    if kind == "flat":
        return IndexSpec("flat")
    if kind == "hnsw":
        return IndexSpec("hnsw")
    if kind in ("ivf", "ivfsq"):
        return IndexSpec(kind, nlist=nlist)
    budget = usable if usable is not None else full_size // 8
    sizes = (128, 96, 64, 48, 32, 24, 16, 12, 8, 4)  # bytes a vector; more is more faithful
    fitting = [
        m
        for m in sizes
        if d % m == 0 and m <= d // 2 and n * (m + _ID_BYTES) * LIST_GROWTH <= budget
    ]
    if not fitting:
        raise HeadstartError(
            f"{n} vectors do not fit in {max_memory or budget} bytes even at 4 bytes each; "
            "give a larger --max-memory"
        )
    # A codebook cannot have more centroids than there are training vectors.
    nbits = 8 if n >= 256 else max(1, int(math.log2(max(n, 2))))
    return IndexSpec("ivfpq", nlist=nlist, pq_m=fitting[0], pq_nbits=nbits)
