"""``headstart audit`` over 100,000 cached vectors: how long it takes, stage by stage.

The collection is laid out as a finished ``headstart extract`` leaves it (bench/synthetic.py):
one small file per vector, recorded in the stat index, with a synthetic 512-dimensional
embedding each in the cache, labelled by the nearest of 100 directions (5% of labels then
flipped). Three manifests split it 80/10/10 into train, val and test, with 20 renamed copies of
training files planted in each of val and test. Then:

1. the whole command as a user runs it, in a fresh process (nothing left to embed): wall time
   and peak memory (target: under a minute on 2 cores);
2. the stages on their own, in this process: reading the sources, exact duplicates,
   near-duplicates (across sources, then within them too, as ``--near-within`` asks),
   out-of-fold probabilities and cleanlab;
3. the near-duplicate search with an exact (flat) index beside an inverted file (IVF), the
   smaller source indexed, at a few index sizes: where IVF starts to pay
   (``headstart.audit.near.FLAT_MAX_ROWS``).

    python bench/audit_speed.py [--count 100000] [--dim 512]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from peak_memory import run_measured
from synthetic import embedding_blocks, lay_out_extracted

from headstart.audit.duplicates import exact_duplicates
from headstart.audit.labels import out_of_fold_probabilities, rank_label_issues
from headstart.audit.near import near_duplicates
from headstart.audit.settings import DEFAULT_NEAR_THRESHOLD, LabelSearch, NearSearch
from headstart.audit.sources import AuditSource, embed_audit_sources
from headstart.cache import EmbeddingCache, FileRecord
from headstart.extract import ExtractOptions, resolve_recipe

MODEL = ["--model", "resnet18", "--weights", "none", "--device", "cpu"]
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
PLANTED_COPIES = 20
CLASSES = 100
FLIPPED = 0.05


class _Labelled:
    """Passes the vector blocks on while giving each vector a label that follows it (the
    nearest of 100 fixed directions), so the label search has classes to learn."""

    def __init__(self, blocks: Iterator[np.ndarray], classes: int) -> None:
        self.blocks, self.classes = blocks, classes
        self.labels: list[np.ndarray] = []
        self.directions: np.ndarray | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks:
            if self.directions is None:
                self.directions = block[: self.classes]
            self.labels.append((block @ self.directions.T).argmax(axis=1))
            yield block


def write_manifests(root: Path, labels: np.ndarray, keys: np.ndarray) -> list[Path]:
    """train/val/test manifests over the laid-out files, shuffled; FLIPPED of the labels
    changed, and renamed copies of training files planted in val and test (recorded in the
    stat index with their original's key, as an extract would leave them)."""
    # File i holds vector i (synthetic.lay_out_extracted's naming).
    files = [root / "images" / f"class{i % CLASSES:03d}" / f"{i:07d}.jpg" for i in range(len(keys))]
    rng = np.random.default_rng(0)
    given = labels.copy()
    flips = rng.random(len(given)) < FLIPPED
    given[flips] = (given[flips] + rng.integers(1, CLASSES, int(flips.sum()))) % CLASSES
    order = rng.permutation(len(files))
    manifests, start, copies = [], 0, []
    for name, share in SPLITS:
        size = round(share * len(files)) if name != "test" else len(files) - start
        rows = [(files[i], given[i]) for i in order[start : start + size]]
        start += size
        if name != "train":
            for j in range(PLANTED_COPIES):
                i = order[j]  # a training file
                copy = root / "copies" / name / f"copy{j}.jpg"
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(files[i], copy)
                st = copy.stat()
                label = f"class{given[i]:03d}"
                copies.append(
                    FileRecord(str(copy), st.st_size, st.st_mtime_ns, keys[i].decode(), label)
                )
                rows.append((copy, given[i]))
        manifest = root / f"{name}.csv"
        manifest.write_text("".join(f"{p},class{label:03d}\n" for p, label in rows))
        manifests.append(manifest)
    with EmbeddingCache(root / "cache").catalog() as catalog:
        catalog.record(copies)
    return manifests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headstart-audit-speed-") as tmp:
        root = Path(tmp)
        options = ExtractOptions(model="resnet18", weights="none", device="cpu")
        blocks = _Labelled(embedding_blocks(args.count, args.dim, seed=1), CLASSES)
        keys = lay_out_extracted(root, resolve_recipe(options).fingerprint, blocks, CLASSES)
        labels = np.concatenate(blocks.labels)
        manifests = [str(m) for m in write_manifests(root, labels, keys)]
        cache = str(root / "cache")
        print(f"{args.count} cached {args.dim}-d vectors, 100 classes, split 80/10/10, CPU")

        argv = ["audit", *manifests, *MODEL, "--cache", cache, "-q", "--json", f"{tmp}/a.json"]
        before = _children_cpu()
        run = run_measured(argv)
        if run.returncode != 0:
            raise SystemExit(run.output)
        # CPU time beside wall time: on a shared machine the wall clock also counts the
        # other programs' turns.
        print(f"1. headstart audit, fresh process: {run.seconds:.1f} s wall, "
              f"{_children_cpu() - before:.1f} s CPU, peak RSS {run.main_mb:.0f} MB")  # fmt: skip
        for line in run.output.splitlines():
            if line and not line.startswith(" "):
                print(f"     {line}")

        print("2. stages:")
        began = (time.perf_counter(), time.process_time())
        sources = embed_audit_sources(manifests, options, cache)
        began = _stage("read the sources (nothing to embed)", began)
        exact_duplicates(sources)
        began = _stage("exact duplicates", began)
        near_duplicates(sources, NearSearch(DEFAULT_NEAR_THRESHOLD))
        began = _stage("near-duplicates", began)
        near_duplicates(sources, NearSearch(DEFAULT_NEAR_THRESHOLD, within=True))
        began = _stage("near-duplicates within sources too", began)
        search = LabelSearch()
        pool = out_of_fold_probabilities(sources, search)
        began = _stage(f"out-of-fold probabilities ({search.folds} folds)", began)
        rank_label_issues(pool, search.filter_by)
        _stage("cleanlab", began)

        print("3. near-duplicate search, flat vs IVF, by indexed rows:")
        everything = sources[0].data
        for indexed in (5_000, 20_000, 40_000):
            if 2 * indexed > len(everything.keys):
                break
            first = AuditSource("a", everything.subset(np.arange(indexed)))
            second = AuditSource("b", everything.subset(np.arange(indexed, 2 * indexed)))
            times = []
            for flat_max in (indexed, 0):
                began = time.perf_counter()
                near_duplicates(
                    [first, second], NearSearch(DEFAULT_NEAR_THRESHOLD, flat_max_rows=flat_max)
                )
                times.append(time.perf_counter() - began)
            print(f"   {indexed:>6} indexed, {indexed} searched: flat {times[0]:5.1f} s, "
                  f"IVF {times[1]:5.1f} s ({times[0] / times[1]:.1f}x)")  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stage(name: str, began: tuple[float, float]) -> tuple[float, float]:
    now = (time.perf_counter(), time.process_time())
    print(f"   {name:<45} {now[0] - began[0]:6.1f} s wall, {now[1] - began[1]:6.1f} s CPU",
          flush=True)  # fmt: skip
    return now


if __name__ == "__main__":
    main()
