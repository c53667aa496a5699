"""A million cached files: the unchanged rerun, and an index built in bounded memory.

The benchmark lays out a collection the way a finished ``headstart extract`` leaves it, without
spending hours on a backbone: ``--count`` small files in 100 class folders, each recorded in the
stat index with its content key, and for each key a synthetic 512-dimensional vector shaped like
an embedding (``synthetic.py``) in float16 shards under the fingerprint of resnet18 with random
weights. Then, each as a fresh process, with its wall time and peak resident memory:

1. ``headstart extract FOLDER`` over the unchanged collection: listing, one ``stat`` per file and
   the stat index; nothing is hashed or embedded.
2. ``headstart index build FOLDER --max-memory 256M``: ``auto`` picks a compressed IVF (PQ for
   this budget), trains it on a sample and streams the vectors from the shards a block at a time.
3. The baseline, side by side: the same index built the in-memory way, by reading every vector
   into one float32 array first (``Embedded.X``) and handing that to the same builder.

    python bench/index_scale.py [--count 1000000] [--dim 512] [--max-memory 256M]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from peak_memory import CLI, run_measured
from synthetic import embedding_blocks, lay_out_extracted

from headstart.extract import ExtractOptions, resolve_recipe

MODEL = ["--model", "resnet18", "--weights", "none", "--device", "cpu"]
BASELINE = """\
from headstart.classify.data import embed_sources
from headstart.search.build import build_index
from headstart.search.spec import choose_spec
from headstart.sizes import parse_size
from headstart.extract import ExtractOptions
folder, cache, budget = sys.argv[1:]
options = ExtractOptions(model="resnet18", weights="none", device="cpu")
X = embed_sources([folder], options, cache).X
spec = choose_spec(len(X), X.shape[1], "auto", parse_size(budget))
index, spec, recall = build_index(X, spec)
print(f"{spec.describe()}, recall@10 {recall:.3f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--max-memory", default="256M", help="The index build's budget.")
    args = parser.parse_args()
    float32_mb = args.count * args.dim * 4 / 2**20
    with tempfile.TemporaryDirectory(prefix="headstart-index-scale-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        options = ExtractOptions(model="resnet18", weights="none", device="cpu")
        blocks = embedding_blocks(args.count, args.dim, seed=1)
        lay_out_extracted(root, resolve_recipe(options).fingerprint, blocks, classes=100)
        print(f"laid out {args.count} files and vectors in {time.perf_counter() - began:.0f} s")
        print(f"{args.count} files, {args.dim}-d vectors ({float32_mb:.0f} MB as float32), CPU")
        folder, cache = str(root / "images"), str(root / "cache")
        build = ["index", "build", folder, *MODEL, "--cache", cache, "--out", str(root / "index")]
        runs = (
            ("unchanged extract rerun", ["extract", folder, *MODEL, "--cache", cache, "-q"], CLI),
            ("index build, streamed", [*build, "--max-memory", args.max_memory, "-q"], CLI),
            ("baseline, all in memory", [folder, cache, args.max_memory], BASELINE),
        )
        peaks = []
        for name, argv, body in runs:
            run = run_measured(argv, body)
            lines = run.output.splitlines()
            said = " / ".join(x for x in lines if x.strip() and not x.startswith("fingerprint"))
            print(
                f"  {name:<24} {run.seconds:7.1f} s  peak RSS {run.main_mb:6.0f} MB   [{said}]",
                flush=True,
            )
            peaks.append(run.main_mb)
        print(
            f"  streamed peak RSS = {peaks[1] / peaks[2]:.2f}x the baseline's; "
            f"the vectors alone take {float32_mb:.0f} MB as float32"
        )


if __name__ == "__main__":
    main()
