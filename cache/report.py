"""What a cache holds: per fingerprint counts, widths, sizes, cached texts; files indexed;
failures."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from headstart.cache.fingerprint import Fingerprint
from headstart.cache.shards import read_shard_info
from headstart.cache.store import EmbeddingCache
from headstart.cache.texts import TextCache
from headstart.errors import HeadstartError

__all__ = ["CacheReport", "FingerprintReport", "describe_cache"]


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
class CacheReport:
    root: Path
    fingerprints: list[FingerprintReport]
    files_indexed: int
    failures: int
    failure_reasons: list[tuple[str, int]] = field(default_factory=list)


def describe_cache(root: str | os.PathLike[str]) -> CacheReport:
    """Summarise a cache directory without changing it."""
    cache = EmbeddingCache(root)
    if not cache.catalog_path.exists() and not cache.fingerprints():
        raise HeadstartError(f"{str(root)!r} is not a headstart cache (no catalog.sqlite)")
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
        )


def _reason_kind(reason: str) -> str:
    # "cannot decode JPEG data: image file is truncated (3 bytes not processed)" -> the part
    # before the details, so similar failures group together.
    return reason.split(" (")[0]
