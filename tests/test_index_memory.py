"""A ``knn`` over a memory-mapped index: its peak memory does not grow with the index, and its
answers are the in-memory index's.

Two IVF indexes 8x apart (20,000 and 160,000 vectors of 256 dimensions: 20 and 160 MB of
float32) are queried by ``headstart knn --key`` as fresh processes, and each one's peak RSS
(VmHWM) is read as bench/peak_memory.py reads it. Read into memory, the larger index would add
its 140 MB of vectors; mapped, a start reads the coarse quantizer and the few lists one query
probes. Not a timing test: the margin is in megabytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.cache import EmbeddingCache, Fingerprint, ShardWriter
from headstart.search.build import build_index
from headstart.search.spec import IndexSpec
from headstart.search.store import load_index, save_index

FINGERPRINT = Fingerprint({"model": "test"}, {"model": "resnet18", "weights": "none"})
D = 256
SMALL, LARGE = 20_000, 160_000
QUERY_KEYS = [f"{i:064x}" for i in range(1, 5)]
_MEASURED = """\
import sys
from headstart.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print('PEAK-RSS-KB', hwm.split()[1], flush=True)
sys.exit(status)
"""


def _vectors(n: int) -> np.ndarray:
    """Clustered vectors (as embeddings are), the same first rows at every size."""
    centres = np.random.default_rng(0).normal(size=(200, D)).astype(np.float32)
    rng = np.random.default_rng(1)
    return centres[rng.integers(0, 200, n)] + rng.normal(size=(n, D)).astype(np.float32) * 0.5


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("index-memory")
    X = _vectors(LARGE)
    for n in (SMALL, LARGE):
        index, spec, recall = build_index(X[:n], IndexSpec("ivf", nlist=256), target_recall=0.9)
        save_index(root / f"index{n}", index, spec, recall, fingerprint=FINGERPRINT,
                   paths=(f"/img/{i}.jpg" for i in range(n)), labels=(None for _ in range(n)),
                   keys=(f"{i:064x}" for i in range(n)))  # fmt: skip
    # The queries' vectors are all the cache holds: what grows is the index alone.
    queries = X[1:5] + np.random.default_rng(2).normal(size=(4, D)).astype(np.float32) * 0.1
    with ShardWriter(EmbeddingCache(root / "cache").create(FINGERPRINT), dtype="float32") as w:
        w.add(np.array(QUERY_KEYS, dtype="S64"), queries)
    return root


def _knn(workspace: Path, n: int) -> tuple[float, list[str]]:
    """Peak RSS (MB) of ``headstart knn`` over the index of ``n``, and its output lines."""
    keys = [arg for key in QUERY_KEYS for arg in ("--key", key)]
    args = [
        "knn",
        str(workspace / f"index{n}"),
        *keys,
        "-k",
        "5",
        "--cache",
        str(workspace / "cache"),
    ]
    done = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    peak = next(line for line in lines if line.startswith("PEAK-RSS-KB"))
    return int(peak.split()[1]) / 1024, [line for line in lines if line is not peak]


def test_knn_start_memory_does_not_grow_with_a_mapped_index(workspace: Path) -> None:
    small, _ = _knn(workspace, SMALL)
    large, _ = _knn(workspace, LARGE)
    vectors_mb = (LARGE - SMALL) * D * 4 / 2**20  # 137 MB more float32 in the larger index
    print(f"knn start peak RSS: {small:.0f} MB at {SMALL}, {large:.0f} MB at {LARGE}")
    assert large - small < 0.25 * vectors_mb, (small, large)


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_a_mapped_index_answers_as_the_index_read_into_memory(workspace: Path, n: int) -> None:
    mapped = load_index(workspace / f"index{n}")
    read = load_index(workspace / f"index{n}", mmap=False)
    queries = _vectors(300)[::7]
    for index in (mapped, read):
        assert index.spec.nprobe < index.spec.nlist  # approximate: probing as tuned
    got, want = mapped.search(queries, 10), read.search(queries, 10)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert mapped.near_duplicates(0.999) == read.near_duplicates(0.999)
    _, shown = _knn(workspace, n)
    first = [line.split() for line in shown if line.startswith(" ")][:5]
    store = EmbeddingCache(workspace / "cache").open(FINGERPRINT)
    _, rows = read.search(store.get(np.array(QUERY_KEYS[:1], dtype="S64")), 5)
    assert [r[3] for r in first] == [f"/img/{row}.jpg" for row in rows[0]]
