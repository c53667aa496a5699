"""``headstart train`` (logreg) at two sizes 8x apart: peak RSS and wall time, and their ratios,
with the in-memory path beside it.

The benchmark lays out two synthetic caches as a finished ``extract`` leaves them (one tiny file
per vector in class folders, each in the stat index, the vectors in float16 shards), with the
fingerprint of ``--model`` at random weights on CPU, so ``train`` embeds nothing and reads the
cache. Each class is a set of the clusters of bench/synthetic.py, so the classes overlap and
logreg has work to do. Then, each as a fresh process measured as bench/peak_memory.py does:

- a first ``train`` with a 1 MB budget, refused in one line that says what the process holds
  before it reads a vector (and which resolves the model's recipe once for the cache);
- ``headstart train --head logreg`` under ``--max-memory`` (default: what the smaller run
  holds before reading a vector, plus 256 MB, for both sizes): the streaming path;
- the in-memory path, as ``train`` did before: every vector read as float32 into one array,
  then ``LogisticRegressionHead.fit(X, y)`` on the training split. Left out where the vectors
  would not fit in half the free memory.

    python bench/train_scale.py [--rows 20000] [--factor 8] [--model resnet18]
        [--max-memory 2G] [--classes 100]

``--rows 1000000 --model resnet50`` goes to 8 million rows of 2048 dimensions (about 32 GB of
shards, and hours of laying out).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
from peak_memory import Measured, run_measured
from synthetic import embedding_blocks, lay_out_extracted

WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
RUNTIME = ["--weights", "none", "--device", "cpu", "--precision", "fp32", "--no-compile"]

IN_MEMORY = """\
import sys, numpy as np
from headstart.cache import EmbeddingCache
from headstart.classify.data import read_embedded, stratified_split
from headstart.classify.linear import LogisticRegressionHead
from headstart.extract import ExtractOptions, resolve_recipe
images, cache_dir, model = sys.argv[1:4]
options = ExtractOptions(model=model, weights="none", device="cpu", precision="fp32")
cache = EmbeddingCache(cache_dir)
data = read_embedded([images], cache, resolve_recipe(options).fingerprint)
labels = data.labels.astype(str)
train, val = stratified_split(labels, 0.2, 0)
X = data.X
head = LogisticRegressionHead().fit(X[train], labels[train])
print("validation accuracy", head.score(X[val], labels[val]))
"""


def class_blocks(n: int, d: int, classes: int):
    """Blocks of bench/synthetic.py's clustered vectors, each row's cluster tied to its class
    (row i is in class i % classes, as lay_out_extracted files it)."""
    for start, block in zip(range(0, n, 100_000), embedding_blocks(n, d, seed=1), strict=True):
        rows = np.arange(start, start + len(block))
        # Shift each row towards a direction of its class: separable, but not trivially.
        shift = np.random.default_rng(7).normal(size=(classes, d)).astype(np.float32)
        block = block + 0.0015 * shift[rows % classes]
        yield block / np.linalg.norm(block, axis=1, keepdims=True)


def lay_out(root: Path, rows: int, model: str, classes: int) -> Path:
    from headstart.extract import ExtractOptions, resolve_recipe

    options = ExtractOptions(model=model, weights="none", device="cpu", precision="fp32")
    fingerprint = resolve_recipe(options).fingerprint
    lay_out_extracted(root, fingerprint, class_blocks(rows, WIDTHS[model], classes), classes)
    return root / "images"


def train(images: Path, model: str, *extra: str) -> Measured:
    cache = images.parent / "cache"
    return run_measured(
        ["train", str(images), "--model", model, *RUNTIME, "--cache", str(cache), "-q", "-o",
         str(images.parent / "head"), *extra]
    )  # fmt: skip


def held_before_reading(images: Path, model: str) -> str:
    refused = train(images, model, "--max-memory", "1M")
    found = re.search(r"beyond the ([0-9.]+ [MG]B) already in use", refused.output)
    return found.group(1) if found else f"? ({refused.output.strip()[-200:]})"


def accuracy(output: str) -> str:
    found = re.search(r"validation accuracy ([0-9.]+)", output)
    return found.group(1) if found else "?"


def fits_in_memory(rows: int, d: int) -> bool:
    with open("/proc/meminfo") as meminfo:
        free = next(int(line.split()[1]) * 1024 for line in meminfo if "MemAvailable" in line)
    return 3 * 4 * rows * d < free / 2  # the vectors, the split's copy, the standardised copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="the smaller size")
    parser.add_argument("--factor", type=int, default=8)
    parser.add_argument("--model", choices=sorted(WIDTHS), default="resnet18")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument(
        "--max-memory", help="passed to train [default: held before reading + 256 MB]"
    )
    args = parser.parse_args()
    sizes = (args.rows, args.rows * args.factor)
    d = WIDTHS[args.model]
    budget = ["--max-memory", args.max_memory] if args.max_memory else []
    results = {}
    with tempfile.TemporaryDirectory(prefix="headstart-train-scale-") as tmp:
        for rows in sizes:
            images = lay_out(Path(tmp) / str(rows), rows, args.model, args.classes)
            held = held_before_reading(images, args.model)
            if not budget:  # one budget for both sizes, from what the smaller one holds
                megabytes = float(held.split()[0]) * (1024 if held.endswith("GB") else 1)
                budget = ["--max-memory", f"{int(megabytes) + 256}M"]
            streamed = train(images, args.model, "--head", "logreg", *budget)
            if streamed.returncode:
                raise SystemExit(streamed.output[-2000:])
            baseline = None
            if fits_in_memory(rows, d):
                cache = images.parent / "cache"
                baseline = run_measured([str(images), str(cache), args.model], body=IN_MEMORY)
                if baseline.returncode:
                    raise SystemExit(baseline.output[-2000:])
            results[rows] = (held, streamed, baseline)
            print(f"{rows} rows done", flush=True)
    print(
        f"\ntrain --head logreg on {args.model}-shaped vectors ({d} dimensions, float16 in "
        f"the cache), {args.classes} classes, {' '.join(budget)}"
    )
    print(f"{'rows':>10} {'held':>10} {'peak RSS':>10} {'wall':>8} {'val acc':>8}   in memory")
    for rows, (held, streamed, baseline) in results.items():
        before = (
            f"{baseline.main_mb:7.0f} MB {baseline.seconds:7.1f} s {accuracy(baseline.output)}"
            if baseline
            else "does not fit"
        )
        print(
            f"{rows:>10} {held:>10} {streamed.main_mb:7.0f} MB {streamed.seconds:6.1f} s "
            f"{accuracy(streamed.output):>8}   {before}"
        )
    small, large = (results[rows] for rows in sizes)
    rss, wall = large[1].main_mb / small[1].main_mb, large[1].seconds / small[1].seconds
    print(f"ratio {args.factor}x rows: streaming peak RSS {rss:.2f}x, wall {wall:.2f}x")
    if small[2] and large[2]:
        print(
            f"                 in memory peak RSS {large[2].main_mb / small[2].main_mb:.2f}x, "
            f"wall {large[2].seconds / small[2].seconds:.2f}x"
        )


if __name__ == "__main__":
    main()
