"""``headstart index build`` in bounded memory: as the images grow 8x under one small budget,
the peak resident memory stays under the budget and grows by at most ``MARGIN_MB`` (the
index's own compressed codes and a training sample that follows the number of lists), and the
index finds the exact neighbours as well as one built in memory from the same vectors. A
budget that cannot hold even the smallest build is refused in one line before anything is
embedded.

Peak RSS is measured as bench/peak_memory.py does (``VmHWM`` of a fresh process); the refusal
of a 1 MB budget says what the process holds before any work (Python, torch and FAISS).
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_cache import lay_out

from headstart.cache import EmbeddingCache
from headstart.search.build import build_index
from headstart.search.exact import exact_search, l2_normalize
from headstart.search.store import load_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peak_memory import run_measured

MODEL = ["-m", "resnet18", "-w", "none", "--device", "cpu", "--precision", "fp32", "--no-compile"]
SMALL, DIM, CLASSES = 4000, 512, 10
HEADROOM_MB = 96  # the budget: what the process holds before any work, plus this
# The most the peak may grow from SMALL to 8 x SMALL images: the codes (a few hundred KB) and
# the training sample, 39 vectors a list as the lists go from 102 to 512 (10,000 -> 20,000
# vectors of 2 KB, and their residuals beside them: 40 MB).
MARGIN_MB = 64


def _layout(root: Path, rows: int) -> Path:
    from headstart.extract import ExtractOptions, resolve_recipe

    options = ExtractOptions(model="resnet18", weights="none", device="cpu", precision="fp32")
    return lay_out(root, resolve_recipe(options).fingerprint, rows, DIM, CLASSES)


def _build(images: Path, *extra: str):
    cache, out = images.parent / "cache", images.parent / "index"
    return run_measured(["index", "build", str(images), *MODEL, "--cache", str(cache), "-q",
                         "--out", str(out), "--kind", "ivfpq", *extra])  # fmt: skip


def _held_mb(images: Path) -> float:
    # A first extract resolves the model's recipe and remembers it, as a second day finds it.
    extracted = run_measured(["extract", str(images), *MODEL, "--cache",
                              str(images.parent / "cache"), "-q"])  # fmt: skip
    assert extracted.returncode == 0, extracted.output
    refused = _build(images, "--max-memory", "1M")
    assert refused.returncode == 1, refused.output
    message = [line for line in refused.output.splitlines() if line.strip()]
    assert len(message) == 1 and "Traceback" not in refused.output, refused.output
    found = re.search(r"already holds \(([0-9.]+) (MB|GB)", message[0])
    assert found, message[0]
    assert not (images.parent / "index").exists()  # refused before anything was written
    return float(found.group(1)) * (1024 if found.group(2) == "GB" else 1)


@pytest.mark.slow  # about two minutes on 2 cores: laying out 36,000 files, six runs
@pytest.mark.timeout(1200)
def test_index_build_stays_in_its_budget_while_images_grow_eightfold(tmp_path: Path) -> None:
    sizes = (SMALL, 8 * SMALL)
    images = {n: _layout(tmp_path / str(n), n) for n in sizes}
    budget = round(max(_held_mb(images[n]) for n in sizes) + HEADROOM_MB)
    peaks = {}
    for n, path in images.items():
        run = _build(path, "--max-memory", f"{budget}M", "--no-thumbnails")
        assert run.returncode == 0, run.output
        peaks[n] = run.main_mb
    assert max(peaks.values()) <= budget, (peaks, budget)
    assert peaks[8 * SMALL] - peaks[SMALL] <= MARGIN_MB, (peaks, budget)

    # The same vectors, in the same (listing) order, indexed in memory as before: as good
    # answers. (Not the same ones: the budget trains the quantizers on a smaller sample.)
    built = load_index(images[8 * SMALL].parent / "index", mmap=False)
    keys = np.array([item.key.encode() for block in built.items.blocks() for item in block])
    store = EmbeddingCache(images[8 * SMALL].parent / "cache").open(built.fingerprint)
    X = l2_normalize(store.get(keys))
    in_memory, spec, _ = build_index(X, built.spec)
    assert spec.nlist == built.spec.nlist and in_memory.ntotal == built.index.ntotal
    queries = X[:: len(X) // 200]
    _, truth = exact_search(X, queries, 10)
    recalls = [
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
        for found in (built.search(queries, 10)[1], in_memory.search(queries, 10)[1])
    ]
    assert recalls[0] >= recalls[1] - 0.05, recalls
