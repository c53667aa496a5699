"""Indexes built in parts, on several machines, and merged into one: ``headstart index merge``.

Parts merge when they share one trained quantizer (``index build --trained-from FIRST``): the
same coarse centroids, and the same scalar or product quantizer, so a vector lands in the same
list with the same code whichever part added it. Each part is memory-mapped; list by list, its
codes and ids (shifted by the rows of the parts before it) are appended to the merged index,
which is then saved with the parts' items and thumbnails concatenated in order. Row ``r`` of part
``p`` becomes row ``r + rows before p``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np

from headstart.errors import HeadstartError
from headstart.search.budget import plan_build
from headstart.search.loaded import LoadedIndex
from headstart.search.spec import IVF_KINDS
from headstart.search.store import load_index, save_index
from headstart.search.thumbnails import ThumbnailSummary, concatenate_thumbnails

__all__ = ["Merged", "emptied", "merge_indexes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Merged:
    count: int
    parts: int


def emptied(loaded: LoadedIndex):
    """``loaded``'s index, trained but holding no vectors (its lists replaced by empty ones in
    memory): what ``--trained-from`` adds a part's vectors to."""
    import faiss

    if loaded.spec.kind not in IVF_KINDS:
        raise HeadstartError(
            f"--trained-from needs an IVF index (ivf, ivfsq, ivfpq), not {loaded.spec.kind}"
        )
    index = loaded.cpu_index
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns its new lists now
    ivf.ntotal = index.ntotal = 0
    return index


def merge_indexes(
    out: str | os.PathLike[str],
    parts: Sequence[str | os.PathLike[str]],
    *,
    max_memory: int | None = None,
) -> Merged:
    """Merge the IVF indexes in ``parts`` (one trained quantizer) into a new index at ``out``."""
    import faiss

    if len(parts) < 2:
        raise HeadstartError("give two or more index parts to merge")
    out = Path(out)
    if any(out.resolve() == Path(p).resolve() for p in parts):
        raise HeadstartError(f"{out} is one of the parts; merge into a new directory")
    loaded = [load_index(p) for p in parts]
    first = loaded[0]
    _check_compatible(loaded, parts)
    total = sum(part.index.ntotal for part in loaded)
    d = first.cpu_index.d
    if max_memory is not None:
        plan_build(first.spec, total, d, max_memory)  # the merged index is built in memory
    merged = emptied(load_index(parts[0]))
    target = faiss.extract_index_ivf(merged).invlists
    offset = 0
    for part in loaded:
        source = faiss.extract_index_ivf(part.cpu_index).invlists
        for number in range(source.nlist):
            size = source.list_size(number)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(source.get_ids(number), size) + offset
            codes = faiss.rev_swig_ptr(source.get_codes(number), size * source.code_size).copy()
            target.add_entries(number, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        offset += part.index.ntotal
    faiss.extract_index_ivf(merged).ntotal = merged.ntotal = total
    # Each part was tuned alone: the most probes any needed, and the least recall any reached.
    spec = replace(first.spec, nprobe=max(part.spec.nprobe for part in loaded))
    recall = min(float(part.document["recall_at_10"]) for part in loaded)
    out.mkdir(parents=True, exist_ok=True)
    thumbnails = None
    if all(part.thumbnails is not None for part in loaded):
        count, size = concatenate_thumbnails(out, [part.thumbnails for part in loaded])
        missing = sum(int(part.document["thumbnails"]["missing"]) for part in loaded)
        side = int(first.document["thumbnails"]["side"])
        thumbnails = ThumbnailSummary(side, count, missing, size)
    items = _items(loaded)
    save_index(
        out,
        merged,
        spec,
        recall,
        fingerprint=first.fingerprint,
        paths=(item.path for item in items[0]),
        labels=(item.label for item in items[1]),
        keys=(item.key for item in items[2]),
        captions=(item.caption for item in items[3]),
        thumbnails=thumbnails,
    )
    log.info("merged %d parts into %s: %d vectors", len(parts), out, total)
    return Merged(total, len(parts))


def _items(loaded: Sequence[LoadedIndex]) -> tuple[Iterator, ...]:
    """Four iterators over the parts' items in order (save_index reads them in step)."""

    def every() -> Iterator:
        return chain.from_iterable(chain.from_iterable(p.items.blocks()) for p in loaded)

    return every(), every(), every(), every()


def _check_compatible(loaded: Sequence[LoadedIndex], parts: Sequence) -> None:
    import faiss

    first = loaded[0]
    for part, where in zip(loaded, parts, strict=True):
        if part.spec.kind not in IVF_KINDS:
            raise HeadstartError(f"{where} is a {part.spec.kind} index; only IVF parts merge")
        if part.fingerprint.id != first.fingerprint.id:
            raise HeadstartError(
                f"{where} holds embeddings {part.fingerprint.id}, {parts[0]} "
                f"{first.fingerprint.id}: parts must come from one model"
            )
        same_shape = (part.spec.kind, part.spec.nlist, part.spec.pq_m, part.spec.pq_nbits) == (
            first.spec.kind,
            first.spec.nlist,
            first.spec.pq_m,
            first.spec.pq_nbits,
        )
        if not same_shape or not _same_quantizer(part, first, faiss):
            raise HeadstartError(
                f"{where} was not trained with {parts[0]}'s quantizer; build each part with "
                f"index build --trained-from {parts[0]}"
            )


def _same_quantizer(a: LoadedIndex, b: LoadedIndex, faiss) -> bool:
    """Whether two IVF indexes assign and encode a vector alike: the same centroids, and the
    same trained scalar or product quantizer."""
    ivf_a, ivf_b = faiss.extract_index_ivf(a.cpu_index), faiss.extract_index_ivf(b.cpu_index)
    if ivf_a.d != ivf_b.d or ivf_a.nlist != ivf_b.nlist:
        return False
    centroids = (ivf.quantizer.reconstruct_n(0, ivf.nlist) for ivf in (ivf_a, ivf_b))
    if not np.array_equal(*centroids):
        return False
    for name, field in (("sq", "trained"), ("pq", "centroids")):
        if hasattr(a.cpu_index, name):
            mine = faiss.vector_to_array(getattr(getattr(a.cpu_index, name), field))
            theirs = faiss.vector_to_array(getattr(getattr(b.cpu_index, name), field))
            if not np.array_equal(mine, theirs):
                return False
    return True
