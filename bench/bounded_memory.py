"""Every verb at two sizes: peak memory and time as the collection grows (issue 20).

For each size the benchmark lays out a collection the way a finished ``headstart extract``
leaves it (``synthetic.lay_out_extracted``: one small file per vector in 100 class folders, each
in the stat index, and synthetic ``--dim``-wide vectors in float16 shards under resnet18's
random-weights fingerprint), then runs each verb as a fresh process and measures its wall time
and peak resident memory (``VmHWM``):

1. ``extract`` over the unchanged collection, after a first one that remembered the recipe
   (nothing to embed: listing, stat index, key index);
2. ``train --head logreg`` at a fixed C;
3. ``index build`` (``auto`` kind within ``--max-memory``);
4. ``knn`` of one cached key;
5. ``serve`` with the head and the index: start, answer one neighbors query by vector, stop.

It prints both sizes side by side with their ratios. The target: peak RSS at the larger size at
most 1.25x the smaller, and time close to linear in the size.

    python bench/bounded_memory.py [--sizes 1000000 8000000] [--dim 512] [--max-memory 4G]

The default sizes are small enough for a laptop run of a few minutes; the issue's figures use
``--sizes 1000000 8000000`` (about 8 million small files: give it a disk with the inodes).
Laying those out takes longer than any verb, and does not need quiet cores: ``--keep DIR
--lay-out-only`` lays them out and stops, and a later run with the same ``--keep`` measures.

``serve`` needs a head. When ``train`` is not among ``--verbs``, an ncm head trained once on
the smaller collection stands in at both sizes: a head holds one vector a class, whatever the
size of the collection it was trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from peak_memory import run_measured
from synthetic import embedding_blocks, lay_out_extracted

from headstart.extract import ExtractOptions, resolve_recipe

MODEL = ["--model", "resnet18", "--weights", "none", "--device", "cpu"]
VERBS = ["extract", "train", "index", "knn", "serve"]


@dataclass(frozen=True)
class Figure:
    seconds: float
    peak_mb: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(50_000, 400_000))
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--max-memory", default="2G", help="Budget given to each verb.")
    parser.add_argument("--keep", type=Path, help="Lay the collections out here and keep them.")
    parser.add_argument("--verbs", nargs="+", choices=VERBS, default=VERBS, help="What to run.")
    parser.add_argument(
        "--lay-out-only", action="store_true", help="Lay the collections out (--keep) and stop."
    )
    args = parser.parse_args()
    small, large = sorted(args.sizes)
    if args.lay_out_only:
        if args.keep is None:
            parser.error("--lay-out-only needs --keep DIR")
        for n in (small, large):
            lay_out(args.keep / str(n), n, args.dim)
        return
    print(f"{args.dim}-d vectors, budget {args.max_memory}, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="headstart-bounded-") as tmp:
        base = args.keep or Path(tmp)
        stand_in = None if "train" in args.verbs else base / str(small) / "ncm-head"
        figures = {
            n: measure(base / str(n), n, args.dim, args.max_memory, args.verbs, stand_in)
            for n in (small, large)
        }
    print()
    header = f"{'verb':<26}{small:>12,}{large:>12,}{'RSS ratio':>11}{'time ratio':>12}"
    print(header + f"{'B/vector':>10}{'at 1e9':>10}")
    for verb in figures[small]:
        a, b = figures[small][verb], figures[large][verb]
        # What each further vector costs in peak memory, and where that leads at a billion.
        per_vector = max(0.0, (b.peak_mb - a.peak_mb) * 2**20 / (large - small))
        billion_gb = (a.peak_mb * 2**20 + per_vector * (1e9 - small)) / 2**30
        print(
            f"{verb:<26}{a.peak_mb:>9.0f} MB{b.peak_mb:>9.0f} MB{b.peak_mb / a.peak_mb:>10.2f}x"
            f"{b.seconds / max(a.seconds, 1e-9):>11.2f}x{per_vector:>10.1f}{billion_gb:>7.1f} GB"
        )
        print(f"{'':<26}{a.seconds:>10.1f} s{b.seconds:>10.1f} s")
    print(f"(size ratio {large / small:.1f}x; B/vector: peak memory per further vector)")


def lay_out(root: Path, count: int, dim: int) -> None:
    """The collection of ``count`` files under ``root``, unless it is there already."""
    began = time.perf_counter()
    fingerprint = resolve_recipe(ExtractOptions(model="resnet18", weights="none")).fingerprint
    if not (root / "cache").is_dir():
        keys = lay_out_extracted(root, fingerprint, embedding_blocks(count, dim, seed=1), 100)
        (root / "first-key").write_text(keys[0].decode())
    print(f"{count:,}: collection ready in {time.perf_counter() - began:.0f} s", flush=True)


def measure(
    root: Path, count: int, dim: int, budget: str, chosen: list[str], stand_in: Path | None
) -> dict[str, Figure]:
    """Each chosen verb's figure at this size; ``stand_in`` is the head ``serve`` loads when
    ``train`` is not measured (trained here as ncm if it is not there yet)."""
    lay_out(root, count, dim)
    folder, cache = str(root / "images"), str(root / "cache")
    common = [*MODEL, "--cache", cache]
    head, index = stand_in or root / "head", root / "index"
    verbs = {
        "extract (nothing new)": ["extract", folder, *common, "-q"],
        "train logreg": [
            "train", folder, *common, "--head", "logreg", "--C", "0.1", "--max-memory", budget,
            "-o", str(head), "-q",
        ],
        "index build": [
            "index", "build", folder, *common, "--max-memory", budget, "--out", str(index), "-q",
        ],
        "knn (one key)": [
            "knn", str(index), "--key", (root / "first-key").read_text(), "--cache", cache, "-q",
        ],
    }  # fmt: skip
    # The first extract over a collection resolves the recipe (imports torch, builds the model)
    # and remembers it; what is measured is a rerun, as a batch job's second day would be.
    run_measured(verbs["extract (nothing new)"])
    if stand_in is not None and "serve" in chosen and not stand_in.is_dir():
        run = run_measured(["train", folder, *common, "--head", "ncm", "-o", str(head), "-q"])
        if run.returncode != 0:
            raise SystemExit(f"the stand-in ncm head failed: {run.output.strip()[-1500:]}")
    figures = {}
    for verb, argv in verbs.items():
        if verb.split()[0] not in chosen:
            continue
        run = run_measured(argv)
        if run.returncode != 0:
            raise SystemExit(f"{verb} failed at {count}: {run.output.strip()[-1500:]}")
        figures[verb] = Figure(run.seconds, run.main_mb)
        print(f"  {verb:<32}{run.seconds:8.1f} s {run.main_mb:8.0f} MB", flush=True)
    if "serve" in chosen:
        figures["serve start + one query"] = serve_once(head, index, dim)
        last = figures["serve start + one query"]
        print(f"  {'serve start + one query':<32}{last.seconds:8.1f} s {last.peak_mb:8.0f} MB")
    return figures


def serve_once(head: Path, index: Path, dim: int) -> Figure:
    """Start ``headstart serve``, answer one neighbors query by vector, read its peak RSS."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "headstart", "serve", "--head", str(head), "--index", str(index)]
    argv += ["--port", str(port), "--device", "cpu"]
    began = time.perf_counter()
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"serve exited: {server.stderr.read().decode()[-1500:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        body = {"vector": [1.0] * dim, "k": 10}
        answer = httpx.post(f"{url}/v1/neighbors", content=json.dumps(body), timeout=60,
                            headers={"content-type": "application/json"})  # fmt: skip
        answer.raise_for_status()
        seconds = time.perf_counter() - began
        status = Path(f"/proc/{server.pid}/status").read_text().splitlines()
        peak_kb = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    return Figure(seconds, peak_kb / 1024)


if __name__ == "__main__":
    main()
