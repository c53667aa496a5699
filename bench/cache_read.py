"""How fast training reads its embeddings back from the cache, against ``np.load``.

A temporary cache is filled with 50,000 x 2,048 vectors for 50,000 small files in 10 class
folders (synthetic vectors, stored under the fingerprint of resnet50 with random weights so
that ``extract`` sees them as done). Then, side by side, from a warm page cache:

* ``np.load`` of the same vectors as one float32 ``.npy`` file (the floor);
* headstart's store reading the vectors of all keys (open the fingerprint, gather the rows from
  the float16 shards into one float32 array);
* headstart's whole read path for training (also listing the folder, a ``stat`` per file and
  the stat index lookup that turn files into keys);
* the no-op ``extract`` that precedes it in ``headstart train`` (nothing to embed).

    python bench/cache_read.py [--count 50000] [--dim 2048]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from synthetic import lay_out_extracted

from headstart.cache import EmbeddingCache
from headstart.classify.data import read_embedded
from headstart.extract import ExtractOptions, extract, resolve_recipe


def best_of(fn, repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()
    options = ExtractOptions(model="resnet50", weights="none", device="cpu")
    fingerprint = resolve_recipe(options).fingerprint
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.count, args.dim)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="headstart-read-") as tmp:
        root = Path(tmp)
        images, cache = root / "images", EmbeddingCache(root / "cache")
        keys = lay_out_extracted(root, fingerprint, [X], classes=10)
        np.save(root / "X.npy", X)

        floor = best_of(lambda: np.load(root / "X.npy"))
        vectors = best_of(lambda: cache.open(fingerprint).get(keys))
        ours = best_of(lambda: read_embedded([str(images)], cache, fingerprint).X)
        noop = best_of(lambda: extract([str(images)], options, cache.root))
        embedded = read_embedded([str(images)], cache, fingerprint)
        order = np.argsort([int(Path(p).stem) for p in embedded.paths])
        assert np.allclose(embedded.X[order], X, atol=2e-3, rtol=1e-3)  # float16 on disk
    megabytes = X.nbytes / 2**20
    print(f"{args.count} x {args.dim} float32 ({megabytes:.0f} MB), warm page cache")
    print(f"  np.load of one .npy          {floor:6.2f} s  {megabytes / floor:7.0f} MB/s")
    print(
        f"  headstart vectors by key     {vectors:6.2f} s  {megabytes / vectors:7.0f} MB/s"
        f"  = {floor / vectors:.0%} of np.load's speed (target >= 50%)"
    )
    print(
        f"  headstart read for training  {ours:6.2f} s  {megabytes / ours:7.0f} MB/s"
        f"  = {floor / ours:.0%} (adds listing, stat and the stat index)"
    )
    print(f"  no-op extract before it      {noop:6.2f} s  (listing, stat, stat index; nothing new)")
    print(
        f"  both together                {ours + noop:6.2f} s  = "
        f"{floor / (ours + noop):.0%} of np.load's speed"
    )


if __name__ == "__main__":
    main()
