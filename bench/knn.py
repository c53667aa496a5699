"""Nearest-neighbor search: headstart's exact and ``auto`` indexes against their baselines.

1. Exact search, 100,000 x 512 database, 1,000 queries, k=10: headstart's flat FAISS search
   against scikit-learn ``NearestNeighbors(algorithm="brute")`` (same neighbors?) and against
   the floor, the bare float32 product of queries and database.
2. 1,000,000 x 512: the ``auto`` index (IVF, tuned to recall@10 >= 0.95) against exact search
   on the same queries: time per batch of queries, and the recall measured on them.

Vectors are made here with a low intrinsic dimension, as embeddings have (overlapping clusters
in a 48-dimensional latent space mapped into 512 dimensions), L2-normalised; queries are fresh
draws from the same distribution, not indexed items.

    python bench/knn.py [--small 100000] [--large 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.neighbors import NearestNeighbors
from synthetic import embedding_like

from headstart.search.build import build_index
from headstart.search.exact import exact_search
from headstart.search.spec import choose_spec


def timed(fn, repeat: int = 3):
    fn()  # warm-up
    best, result = float("inf"), None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - began)
    return best, result


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def exact_part(n: int, d: int, queries_n: int, k: int) -> None:
    database = embedding_like(n, d, seed=1)
    queries = embedding_like(queries_n, d, seed=2)
    floor, _ = timed(lambda: queries @ database.T)
    ours, (_, rows) = timed(lambda: exact_search(database, queries, k))
    model = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(database)
    theirs, (_, their_rows) = timed(lambda: model.kneighbors(queries), repeat=1)
    same = np.mean([set(a) == set(b) for a, b in zip(rows, their_rows, strict=True)])
    print(f"exact search, {n} x {d}, {queries_n} queries, k={k}")
    print(f"  floor (queries @ database.T)   {floor * 1000:8.1f} ms")
    print(
        f"  headstart (FAISS flat)          {ours * 1000:8.1f} ms  = {ours / floor:.2f}x the floor"
        " (target <= 2x)"
    )
    print(
        f"  scikit-learn brute force        {theirs * 1000:8.1f} ms  = "
        f"{theirs / ours:.1f}x headstart"
    )
    print(f"  same neighbors as scikit-learn: {same:.1%} of queries")


def approximate_part(n: int, d: int, queries_n: int, k: int) -> None:
    database = embedding_like(n, d, seed=3)
    queries = embedding_like(queries_n, d, seed=4)
    exact, (_, truth) = timed(lambda: exact_search(database, queries, k), repeat=1)
    spec = choose_spec(n, d)
    began = time.perf_counter()
    index, spec, tuned = build_index(database, spec, target_recall=0.95)
    build = time.perf_counter() - began
    fast, (_, found) = timed(lambda: index.search(queries, k))
    print(f"\nauto index, {n} x {d}, {queries_n} queries, k={k}")
    print(
        f"  chosen: {spec.describe()} (built and tuned in {build:.0f} s, recall@10 on a "
        f"sample of indexed items {tuned:.3f})"
    )
    print(f"  exact search                    {exact * 1000:8.1f} ms")
    print(
        f"  auto index                      {fast * 1000:8.1f} ms  = {exact / fast:.1f}x faster"
        " (target >= 10x)"
    )
    print(f"  recall@10 on these queries       {recall(found, truth):.3f} (target >= 0.95)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    exact_part(args.small, args.dim, args.queries, 10)
    approximate_part(args.large, args.dim, args.queries, 10)


if __name__ == "__main__":
    main()
