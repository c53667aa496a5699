"""A cache laid out as a finished ``extract`` leaves it, without running a backbone: one tiny
file per vector in class folders, each in the stat index, the vectors in the fingerprint's
shards. For tests of what reads the cache (training out of core) at sizes a backbone would
take minutes to embed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headstart.cache import EmbeddingCache, FileRecord, Fingerprint, ShardWriter, content_key

__all__ = ["class_vectors", "lay_out"]


def class_vectors(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors around ``classes`` overlapping centres (row i in class i % classes)."""
    centres = np.random.default_rng(1000).normal(size=(classes, d)).astype(np.float32)
    codes = np.arange(n) % classes
    noise = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return (centres[codes] * 0.15 + noise).astype(np.float32), codes


def lay_out(
    root: Path,
    fingerprint: Fingerprint,
    n: int,
    d: int,
    classes: int,
    block: int = 4096,
    shard_rows: int | None = None,
) -> Path:
    """Lay out ``n`` rows under ``root`` (``images/classNNN/*.bin`` and ``cache``, in shards
    of ``shard_rows``, the writer's default when None); returns the images folder."""
    cache = EmbeddingCache(root / "cache")
    folders = [root / "images" / f"class{c:03d}" for c in range(classes)]
    for folder in folders:
        folder.mkdir(parents=True)
    with (
        cache.catalog() as catalog,
        ShardWriter(
            cache.create(fingerprint), **({} if shard_rows is None else {"shard_rows": shard_rows})
        ) as writer,
    ):
        for start in range(0, n, block):
            stop = min(start + block, n)
            vectors, _ = class_vectors(stop - start, d, classes, seed=start)
            records = []
            for i in range(start, stop):
                path = folders[i % classes] / f"{i:07d}.jpg"
                data = i.to_bytes(8, "little")
                path.write_bytes(data)
                st = path.stat()
                records.append(
                    FileRecord(
                        str(path), st.st_size, st.st_mtime_ns, content_key(data), path.parent.name
                    )
                )
            catalog.record(records)
            writer.add(np.array([r.key for r in records], dtype="S64"), vectors)
    return root / "images"
