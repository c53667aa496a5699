"""What a cache holds: per fingerprint counts, widths, sizes, cached texts; files indexed;
failures; the writers that wrote it, each with what its own catalog holds."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from headstart.cache.catalogs import LEGACY_CATALOG, count_records
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.shards import read_shard_info
from headstart.cache.store import EmbeddingCache
from headstart.cache.texts import TextCache
from headstart.cache.writers import list_writers
from headstart.errors import HeadstartError

__all__ = ["CacheReport", "FingerprintReport", "WriterReport", "describe_cache"]


@dataclass(frozen=True)
class FingerprintReport:
    fingerprint: Fingerprint
    embeddings: int
    dim: int | None
    shards: int
    bytes: int
    dtypes: tuple[str, ...]
    unreadable_shards: int = 0
    texts: int = 0  # text embeddings cached (image-text models)


@dataclass(frozen=True)
class WriterReport:
    """One writer (or the catalog of a cache from before writers, ``id`` ``catalog.sqlite``):
    what its own catalog holds, before merging with the others."""

    id: str
    host: str
    pid: int
    started_unix: float | None
    finished_unix: float | None
    files: int = 0
    samples: int = 0
    failures: int = 0


@dataclass(frozen=True)
class CacheReport:
    root: Path
    fingerprints: list[FingerprintReport]
    files_indexed: int
    failures: int
    failure_reasons: list[tuple[str, int]] = field(default_factory=list)
    writers: list[WriterReport] = field(default_factory=list)


def describe_cache(root: str | os.PathLike[str]) -> CacheReport:
    """Summarise a cache directory without changing it."""
    cache = EmbeddingCache(root)
    if not cache.catalog_paths() and not cache.fingerprints():
        raise HeadstartError(f"{str(root)!r} is not a headstart cache (no catalog, no embeddings)")
    reports = []
    for fingerprint in cache.fingerprints():
        store = cache.open(fingerprint)
        shards = store.shards
        dtypes = sorted({read_shard_info(p).dtype for p in shards})
        reports.append(
            FingerprintReport(
                fingerprint=fingerprint,
                embeddings=len(store),
                dim=store.dim,
                shards=len(shards),
                bytes=sum(p.stat().st_size for p in shards),
                dtypes=tuple(dtypes),
                unreadable_shards=len(store.unreadable),
                texts=len(TextCache(cache.root, fingerprint)),
            )
        )
    with cache.catalog() as catalog:
        reasons = Counter(_reason_kind(f.reason) for f in catalog.iter_failures())
        return CacheReport(
            root=cache.root,
            fingerprints=reports,
            files_indexed=catalog.count_files(),
            failures=catalog.count_failures(),
            failure_reasons=reasons.most_common(5),
            writers=_writers(cache),
        )


def _writers(cache: EmbeddingCache) -> list[WriterReport]:
    found = []
    if cache.catalog_path.is_file():
        counts = count_records(cache.catalog_path)
        found.append(_writer_report(LEGACY_CATALOG, "-", -1, None, None, counts))
    for writer in list_writers(cache.root):
        path = writer.catalog_path
        counts = count_records(path) if path.is_file() else {}
        found.append(
            _writer_report(
                writer.id,
                writer.host,
                writer.pid,
                writer.started_unix,
                writer.finished_unix,
                counts,
            )
        )
    return found


def _writer_report(
    name: str,
    host: str,
    pid: int,
    started: float | None,
    finished: float | None,
    counts: dict[str, int],
) -> WriterReport:
    return WriterReport(
        name,
        host,
        pid,
        started,
        finished,
        files=counts.get("files", 0),
        samples=counts.get("samples", 0),
        failures=counts.get("failures", 0),
    )


def _reason_kind(reason: str) -> str:
    # "cannot decode JPEG data: image file is truncated (3 bytes not processed)" -> the part
    # before the details, so similar failures group together.
    return reason.split(" (")[0]
