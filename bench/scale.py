"""Extraction at scale on CPU: memory as the collection grows, speed, and an unchanged rerun.

The benchmark writes its own collection of small JPEGs (100,000 by default, 64 px, in 100
class folders), then runs ``headstart extract`` as a fresh process with a small backbone
(mobilenet_v3_small at 64 px, random weights) over the first 10% and over all of it, each into
an empty cache, and finally reruns the full collection unchanged. For each run it prints the
wall time, images/s, and the peak resident memory of the main process and of its largest
decoding worker.

    python bench/scale.py [--count 100000] [--workers 1]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from peak_memory import run_measured
from PIL import Image

# Compiling is switched off so that runs of every size compare like with like.
MODEL = [
    "--model",
    "mobilenet_v3_small",
    "--weights",
    "none",
    "--resize",
    "72",
    "--crop",
    "64",
    "--no-compile",
]


def write_block(job: tuple[str, int, int]) -> None:
    root, start, count = job
    rng = np.random.default_rng(start)
    base = np.linspace(0, 255, 64, dtype=np.float32)
    for i in range(start, start + count):
        folder = Path(root) / f"class{i % 100:03d}"
        colour = rng.uniform(0.2, 1.0, size=3)
        pixels = base[None, :, None] * colour + rng.normal(0, 12, size=(64, 64, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"{i:07d}.jpg", quality=85
        )


def make_collection(root: Path, count: int) -> None:
    for c in range(100):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    step = 2000
    with ProcessPoolExecutor() as pool:
        list(
            pool.map(
                write_block, [(str(root), s, min(step, count - s)) for s in range(0, count, step)]
            )
        )


def run(sources: list[str], cache: Path, workers: int) -> dict:
    args = ["extract", *sources, *MODEL, "--cache", str(cache), "--workers", str(workers), "-q"]
    done = run_measured(args)
    if done.returncode:
        raise RuntimeError(done.output[-2000:])
    rate = re.search(r"([0-9.]+) img/s", done.output)
    summary = next(line for line in done.output.splitlines() if line.startswith("listed"))
    return {
        "seconds": done.seconds,
        "rate": float(rate.group(1)) if rate else 0.0,
        "main_mb": done.main_mb,
        "worker_mb": done.workers_mb,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headstart-scale-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        make_collection(root / "images", args.count)
        print(f"wrote {args.count} JPEGs (64 px) in {time.perf_counter() - began:.0f} s")
        small = root / "first-tenth.txt"
        paths = sorted((root / "images").rglob("*.jpg"))
        small.write_text("".join(f"{p}\n" for p in paths[: args.count // 10]))
        results = {
            f"{args.count // 10} images": run([str(small)], root / "cache-small", args.workers),
            f"{args.count} images": run([str(root / "images")], root / "cache-full", args.workers),
            f"{args.count} unchanged, rerun": run(
                [str(root / "images")], root / "cache-full", args.workers
            ),
        }
    print(f"mobilenet_v3_small at 64 px on CPU, {args.workers} decoding worker(s)")
    for name, r in results.items():
        print(
            f"  {name:<26} {r['seconds']:7.1f} s  {r['rate']:7.1f} img/s  peak RSS main "
            f"{r['main_mb']:6.0f} MB, worker {r['worker_mb']:6.0f} MB   [{r['summary']}]"
        )
    rerun = results[f"{args.count} unchanged, rerun"]["seconds"]
    print(f"unchanged rerun over {args.count} files: {rerun:.1f} s (target < 30 s for 100,000)")


if __name__ == "__main__":
    main()
