"""Synthetic embeddings for the benchmarks, and a cache laid out as ``extract`` leaves it.

Embeddings have a low intrinsic dimension: overlapping Gaussian clusters in a 48-dimensional
latent space, mapped linearly into ``d`` dimensions, plus a little noise, L2-normalised.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from headstart.cache import EmbeddingCache, FileRecord, Fingerprint, ShardWriter, content_key
from headstart.search.exact import l2_normalize


def embedding_blocks(
    n: int, d: int, seed: int, block: int = 100_000, latent: int = 48, clusters: int = 500
) -> Iterator[np.ndarray]:
    """``n`` such vectors, ``block`` rows at a time (so a million never sit in memory)."""
    base = np.random.default_rng(0)  # the same clusters and map for every seed
    centres = base.normal(size=(clusters, latent)).astype(np.float32)
    lift = base.normal(size=(latent, d)).astype(np.float32) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        size = min(block, n - start)
        z = centres[rng.integers(0, clusters, size)]
        z = z + rng.normal(size=(size, latent)).astype(np.float32)
        noise = rng.normal(size=(size, d)).astype(np.float32) * 0.1
        yield l2_normalize(z @ lift + noise)


def embedding_like(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` such vectors in one array."""
    return np.concatenate(list(embedding_blocks(n, d, seed)))


def lay_out_extracted(
    root: Path, fingerprint: Fingerprint, blocks: Iterable[np.ndarray], classes: int
) -> np.ndarray:
    """What a finished extract of one small file per vector leaves, without a backbone: the
    files in ``classes`` folders under ``root/images`` (unique bytes, so unique content keys),
    each recorded in the stat index of ``root/cache``, and the vectors in the fingerprint's
    shards, a block at a time. Returns the content keys in file order."""
    cache = EmbeddingCache(root / "cache")
    folders = [root / "images" / f"class{c:03d}" for c in range(classes)]
    for folder in folders:
        folder.mkdir(parents=True)
    keys, start = [], 0
    with cache.catalog() as catalog, ShardWriter(cache.create(fingerprint)) as writer:
        for vectors in blocks:
            records = []
            for i in range(start, start + len(vectors)):
                path = folders[i % classes] / f"{i:07d}.jpg"
                data = i.to_bytes(8, "little")
                path.write_bytes(data)
                st = path.stat()
                label = path.parent.name
                records.append(
                    FileRecord(str(path), st.st_size, st.st_mtime_ns, content_key(data), label)
                )
            catalog.record(records)
            keys.append(np.array([r.key for r in records], dtype="S64"))
            writer.add(keys[-1], vectors)
            start += len(vectors)
    return np.concatenate(keys)
