"""The job behind ``headstart index build``: embed the sources through the cache (only what is
missing), build an index over their vectors streamed from the shards, and save it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from headstart.classify.data import embed_sources
from headstart.extract import ExtractOptions
from headstart.search.budget import default_budget, plan_build
from headstart.search.build import build_index
from headstart.search.settings import TARGET_RECALL
from headstart.search.spec import IndexSpec, choose_spec
from headstart.search.store import save_index
from headstart.search.thumbnails import ThumbnailSummary, write_thumbnails
from headstart.search.vectors import Vectors

__all__ = ["BuiltIndex", "build_index_from_sources"]


@dataclass
class BuiltIndex:
    directory: Path
    spec: IndexSpec
    recall: float
    count: int
    seconds: float
    missing: int
    thumbnails: ThumbnailSummary | None = None


def build_index_from_sources(
    sources: Sequence[str],
    embed: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str = "auto",
    max_memory: int | None = None,
    target_recall: float = TARGET_RECALL,
    thumbnails: bool = True,
    progress: bool = False,
) -> BuiltIndex:
    """Embed ``sources`` (what the cache lacks) and index them into ``out``, within
    ``max_memory`` bytes (default: half the memory available); a budget that cannot hold the
    build is refused before it starts."""
    budget = max_memory if max_memory is not None else default_budget()
    data = embed_sources(sources, embed, cache_dir, progress=progress)
    started = time.perf_counter()
    vectors = Vectors(data.store, data.keys)  # streamed from the shards, never all in memory
    spec = choose_spec(vectors.count, vectors.dim, kind, budget)
    plan = plan_build(spec, vectors.count, vectors.dim, budget)
    index, spec, recall = build_index(vectors, spec, target_recall=target_recall, plan=plan)
    # Written before index.json, which marks the directory complete.
    thumbnail_summary = write_thumbnails(out, data.paths) if thumbnails else None
    save_index(
        out,
        index,
        spec,
        recall,
        fingerprint=data.fingerprint,
        paths=data.paths,
        labels=data.labels,
        keys=(key.decode() for key in data.keys),  # read in step with paths, a block at a time
        thumbnails=thumbnail_summary,
    )
    elapsed = time.perf_counter() - started
    return BuiltIndex(
        Path(out), spec, recall, vectors.count, elapsed, data.missing, thumbnail_summary
    )
