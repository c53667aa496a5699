"""Nearest-neighbor indexes over embeddings (FAISS), saved beside their items.

Vectors are L2-normalised and compared by inner product (cosine similarity). ``auto`` follows
the FAISS guidelines by size: exact (flat) search below 100k vectors, an inverted file (IVF) with
about 4 sqrt(n) lists above; when the float32 vectors would not fit a ``max_memory`` budget, the
most faithful code that fits: 8-bit scalar quantisation (a byte a dimension, recall@10 near
0.99) and, below that, product quantisation. Approximate indexes are tuned on a sample of
queries (``nprobe`` or ``efSearch`` raised until recall@10 against exact search reaches the
target, or stops improving), and that recall is recorded.

An index directory holds ``index.faiss``, ``items.csv`` (row, path, label, key) and
``index.json`` (kind, parameters, recall, fingerprint, and the SHA-256 of ``index.faiss``, checked
before FAISS parses the file).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart.atomic import atomic_path, write_text_atomic
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import file_key
from headstart.cache.store import FingerprintStore
from headstart.classify.neighbors import exact_search, l2_normalize
from headstart.classify.settings import INDEX_KINDS, TARGET_RECALL
from headstart.classify.thumbnails import ThumbnailStore, ThumbnailSummary
from headstart.errors import HeadstartError

__all__ = [
    "INDEX_FORMAT",
    "IndexSpec",
    "LoadedIndex",
    "Vectors",
    "build_index",
    "choose_spec",
    "load_index",
    "parse_size",
    "save_index",
]

log = logging.getLogger(__name__)

INDEX_FORMAT = "headstart-index/1"
COMPRESSED_KINDS = ("ivfsq", "ivfpq")
IVF_KINDS = ("ivf", *COMPRESSED_KINDS)
FLAT_BELOW = 100_000
_RECALL_QUERIES = 500
# Compressed vectors cap recall below 1, so tuning them stops once doubling nprobe gains less
# than this: probing every list past the cap would only slow each search.
_RECALL_PLATEAU = 0.005


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


@dataclass
class LoadedIndex:
    """A saved index, ready to search (on the GPU when FAISS sees one), and its items."""

    index: Any
    cpu_index: Any
    spec: IndexSpec
    fingerprint: Fingerprint
    paths: list[str]
    labels: list[str | None]
    keys: list[str]
    document: dict[str, Any]
    thumbnails: ThumbnailStore | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of the ``k`` nearest items of each query."""
        queries = l2_normalize(queries)
        if queries.shape[1] != self.index.d:
            raise HeadstartError(
                f"queries have {queries.shape[1]} dimensions, the index {self.index.d}"
            )
        return self.index.search(queries, min(k, self.index.ntotal))

    def near_duplicates(self, threshold: float, k: int = 10) -> list[tuple[int, int, float]]:
        """Pairs (i, j, similarity), i < j, of items at least ``threshold`` similar."""
        import faiss

        if self.spec.kind in IVF_KINDS:
            faiss.extract_index_ivf(self.cpu_index).make_direct_map()
        vectors = self.cpu_index.reconstruct_n(0, self.cpu_index.ntotal)
        pairs = []
        for start in range(0, len(vectors), 4096):
            block = vectors[start : start + 4096]
            similarities, rows = self.index.search(block, min(k + 1, self.index.ntotal))
            for offset, (sims, neighbors) in enumerate(zip(similarities, rows, strict=True)):
                i = start + offset
                pairs.extend(
                    (i, int(j), float(sim))
                    for sim, j in zip(sims, neighbors, strict=True)
                    if j > i and sim >= threshold
                )
        return sorted(pairs, key=lambda pair: -pair[2])


def parse_size(text: str) -> int:
    """'512M', '2G', '1500000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise HeadstartError(f"cannot read a memory size from {text!r}; write e.g. 512M or 2G")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def choose_spec(n: int, d: int, kind: str = "auto", max_memory: int | None = None) -> IndexSpec:
    """The index for ``n`` vectors of ``d`` dimensions, following the FAISS guidelines."""
    if kind not in INDEX_KINDS:
        raise HeadstartError(f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    nlist = int(2 ** round(math.log2(max(4 * math.sqrt(n), 16))))
    nlist = max(1, min(nlist, 65536, n // 39 or 1))  # FAISS wants >= 39 training points a list
    full_size = n * d * 4
    if kind == "auto":
        if max_memory is None or full_size <= max_memory:
            kind = "flat" if n < FLAT_BELOW else "ivf"
        else:
            kind = "ivfsq" if n * d <= max_memory else "ivfpq"
    if kind == "flat":
        return IndexSpec("flat")
    if kind == "hnsw":
        return IndexSpec("hnsw")
    if kind in ("ivf", "ivfsq"):
        return IndexSpec(kind, nlist=nlist)
    budget = max_memory if max_memory is not None else full_size // 8
    sizes = (128, 96, 64, 48, 32, 24, 16, 12, 8, 4)  # bytes a vector; more is more faithful
    fitting = [m for m in sizes if d % m == 0 and m <= d // 2 and n * m <= budget]
    if not fitting:
        raise HeadstartError(f"{n} vectors do not fit in {budget} bytes even at 4 bytes each")
    # A codebook cannot have more centroids than there are training vectors.
    nbits = 8 if n >= 256 else max(1, int(math.log2(max(n, 2))))
    return IndexSpec("ivfpq", nlist=nlist, pq_m=fitting[0], pq_nbits=nbits)


class Vectors:
    """L2-normalised vectors for an index build, a block at a time (FAISS contrib's block
    iterator idea): from an array in memory, or streamed from a cache store by key."""

    def __init__(
        self,
        source: np.ndarray | FingerprintStore,
        keys: np.ndarray | None = None,
        block_rows: int = 65536,
    ) -> None:
        self._source, self._keys, self.block_rows = source, keys, block_rows
        if isinstance(source, np.ndarray):
            self.count, self.dim = source.shape
        else:
            self.count, self.dim = len(keys), int(source.dim or 0)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if isinstance(self._source, np.ndarray):
            return l2_normalize(self._source[rows])
        return l2_normalize(self._source.get(self._keys[rows]))

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.count, self.block_rows):
            yield start, self.take(np.arange(start, min(start + self.block_rows, self.count)))


def build_index(
    vectors: np.ndarray | Vectors,
    spec: IndexSpec,
    *,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> tuple[Any, IndexSpec, float]:
    """Build, fill and tune an index; returns (index, tuned spec, recall@10).

    Vectors are added a block at a time, IVF is trained on a sample, and exact neighbors for
    tuning are merged block by block, so an IVF-PQ index can cover more vectors than memory
    holds as float32.
    """
    if isinstance(vectors, np.ndarray):
        vectors = Vectors(vectors)
    index = _empty_index(spec, vectors.dim)
    if spec.kind in IVF_KINDS:
        _train_quantizers(index, vectors, spec, seed)
    for _, block in vectors.blocks():
        index.add(block)
    spec, recall = _tune(index, vectors, spec, target_recall, seed)
    if recall < target_recall and spec.kind in COMPRESSED_KINDS:
        log.warning(
            "recall@10 %.3f stays below the %g target: the compressed vectors cannot reach "
            "it; a larger --max-memory or --kind ivf would",
            recall,
            target_recall,
        )
    return index, spec, recall


def _empty_index(spec: IndexSpec, d: int):
    """The FAISS index ``spec`` describes, over inner products, before training and adding."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexFlatIP(d)
    if spec.kind == "hnsw":
        return faiss.IndexHNSWFlat(d, spec.hnsw_m, ip)
    quantizer = faiss.IndexFlatIP(d)  # FAISS's Python wrapper keeps it alive with the index
    if spec.kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, d, spec.nlist, ip)
    if spec.kind == "ivfsq":
        qt_8bit = faiss.ScalarQuantizer.QT_8bit
        return faiss.IndexIVFScalarQuantizer(quantizer, d, spec.nlist, qt_8bit, ip)
    return faiss.IndexIVFPQ(quantizer, d, spec.nlist, spec.pq_m, spec.pq_nbits, ip)


def _train_quantizers(index, vectors: Vectors, spec: IndexSpec, seed: int) -> None:
    """Train an IVF index's coarse (and product) quantizer on a sample of the vectors."""
    # FAISS wants >= 39 training vectors per centroid: per IVF list, and per PQ code.
    wanted = 39 * max(spec.nlist, 2**spec.pq_nbits if spec.kind == "ivfpq" else 0)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(vectors.count, size=min(vectors.count, wanted), replace=False))
    if len(sample) < wanted:
        # Said once here, if at all, rather than by FAISS once per quantizer it trains.
        index.cp.min_points_per_centroid = 1
        if spec.kind == "ivfpq":
            index.pq.cp.min_points_per_centroid = 1
            log.warning(
                "product quantisation trained on %d vectors (FAISS advises %d): expect low "
                "recall; --kind ivf or flat suits a collection this small",
                len(sample),
                wanted,
            )
    index.cp.seed = seed
    index.train(vectors.take(sample))


def _exact_neighbors(vectors: Vectors, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows of ``queries`` over all vectors, merged block by block."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start, block in vectors.blocks():
        similarities, rows = exact_search(block, queries, min(k, len(block)))
        if rows.shape[1] < k:  # a short last block: pad so the heap sees k columns
            pad = k - rows.shape[1]
            similarities = np.pad(similarities, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        heap.add_result(similarities, np.where(rows >= 0, rows + start, -1))
    heap.finalize()
    return heap.I


def _tune(
    index, vectors: Vectors, spec: IndexSpec, target: float, seed: int
) -> tuple[IndexSpec, float]:
    if spec.kind == "flat":
        return spec, 1.0
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(
        rng.choice(vectors.count, size=min(vectors.count, _RECALL_QUERIES), replace=False)
    )
    queries = vectors.take(rows)
    k = min(10, vectors.count - 1)
    # The queries are indexed items: leave each one's own row out of both lists, so recall
    # counts real neighbors only.
    truth = _without(_exact_neighbors(vectors, queries, k + 1), rows, k)
    compressed = spec.kind in COMPRESSED_KINDS
    best: tuple[IndexSpec, float] | None = None
    for value in (2**i for i in range(17)):
        if spec.kind == "hnsw":
            spec = replace(spec, ef_search=max(value, 16))
        else:
            spec = replace(spec, nprobe=min(value, spec.nlist))
        _apply(index, spec)
        recall = _recall(_without(index.search(queries, k + 1)[1], rows, k), truth)
        if compressed and best is not None and recall - best[1] < _RECALL_PLATEAU:
            _apply(index, best[0])  # no better for twice the work: keep the cheaper setting
            return best
        best = (spec, recall)
        if recall >= target or (spec.kind != "hnsw" and spec.nprobe >= spec.nlist) or value >= 4096:
            return best
    return best


def _apply(index, spec: IndexSpec) -> None:
    import faiss

    if spec.kind in IVF_KINDS:
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        index.hnsw.efSearch = spec.ef_search


def _without(found: np.ndarray, own_rows: np.ndarray, k: int) -> np.ndarray:
    return np.array(
        [
            [r for r in row if r != own][:k]
            for row, own in zip(found.tolist(), own_rows, strict=True)
        ]
    )


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


def _on_gpu(index, spec: IndexSpec):
    import faiss

    if faiss.get_num_gpus() > 0 and spec.kind in ("flat", "ivf"):
        return faiss.index_cpu_to_all_gpus(index)
    return index


def save_index(
    directory: str | os.PathLike[str],
    index,
    spec: IndexSpec,
    recall: float,
    *,
    fingerprint: Fingerprint,
    paths: list[str],
    labels: list[str | None],
    keys: list[str],
    thumbnails: ThumbnailSummary | None = None,
) -> Path:
    """Write the index, its items and ``index.json`` (last, so it marks completeness).

    ``thumbnails`` describes the ones already written into ``directory``, if any.
    """
    import faiss

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "index.faiss") as temporary:
        faiss.write_index(index, str(temporary))
    # Exact bytes for file names that are not UTF-8, read back the same way by load_index.
    with (
        atomic_path(directory / "items.csv") as temporary,
        open(temporary, "w", newline="", encoding="utf-8", errors="surrogateescape") as f,
    ):
        table = csv.writer(f)
        table.writerow(["row", "path", "label", "key"])
        table.writerows(
            [i, p, lab or "", k]
            for i, (p, lab, k) in enumerate(zip(paths, labels, keys, strict=True))
        )
    document = {
        "format": INDEX_FORMAT,
        "spec": asdict(spec),
        "count": int(index.ntotal),
        "dim": int(index.d),
        "metric": "cosine",
        "recall_at_10": recall,
        "fingerprint": fingerprint.to_dict(),
        "index_sha256": file_key(str(directory / "index.faiss")),
        "items_sha256": file_key(str(directory / "items.csv")),
        "thumbnails": thumbnails.to_dict() if thumbnails else None,
        "created_unix": time.time(),
    }
    write_text_atomic(directory / "index.json", json.dumps(document, indent=2) + "\n")
    return directory


def load_index(directory: str | os.PathLike[str]) -> LoadedIndex:
    """Load a saved index after checking its files are the ones ``index.json`` describes."""
    import faiss

    directory = Path(directory)
    try:
        document = json.loads((directory / "index.json").read_text())
    except FileNotFoundError:
        raise HeadstartError(f"{directory} is not a saved index (no index.json)") from None
    if document.get("format") != INDEX_FORMAT:
        raise HeadstartError(f"{directory} holds no {INDEX_FORMAT} index")
    for name, digest in (("index.faiss", "index_sha256"), ("items.csv", "items_sha256")):
        path = directory / name
        if not path.is_file() or file_key(str(path)) != document.get(digest):
            raise HeadstartError(f"{path} does not match index.json (altered or damaged)")
    spec = IndexSpec(**document["spec"])
    index = faiss.read_index(str(directory / "index.faiss"))
    _apply(index, spec)
    with open(directory / "items.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != index.ntotal:
        raise HeadstartError(f"{directory}: {len(rows)} items for {index.ntotal} vectors")
    recorded = Fingerprint.recorded_in(document, str(directory / "index.json"))
    return LoadedIndex(
        index=_on_gpu(index, spec),
        cpu_index=index,
        spec=spec,
        fingerprint=recorded,
        paths=[r["path"] for r in rows],
        labels=[r["label"] or None for r in rows],
        keys=[r["key"] for r in rows],
        document=document,
        thumbnails=ThumbnailStore(directory, len(rows)) if document.get("thumbnails") else None,
    )
