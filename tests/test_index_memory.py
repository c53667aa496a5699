"""A ``knn`` over a memory-mapped index: its peak memory does not grow with the index, and its
answers are the in-memory index's.

Two IVF indexes 8x apart (20,000 and 160,000 vectors of 256 dimensions: 20 and 160 MB of
float32) are queried by ``headstart knn --key`` as fresh processes, and each one's peak RSS
(VmHWM) is read as bench/peak_memory.py reads it. Read into memory, the larger index would add
its 140 MB of vectors; mapped, a start reads the coarse quantizer and the few lists one query
probes. The same holds for ``headstart serve`` started over IVF indexes of 10,000 and 80,000
vectors of 512 dimensions and asked one query. Not a timing test: the margin is in megabytes.
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


def _vectors(n: int, d: int = D) -> np.ndarray:
    """Clustered vectors (as embeddings are), the same first rows at every size. A query then
    probes a few lists: on unclustered noise, tuning would probe half of them, and a query
    would read (and map) half the index."""
    centres = np.random.default_rng(0).normal(size=(200, d)).astype(np.float32)
    rng = np.random.default_rng(1)
    return centres[rng.integers(0, 200, n)] + rng.normal(size=(n, d)).astype(np.float32) * 0.5


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


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A head (resnet18, random weights: 512-d) and IVF indexes of 10,000 and 80,000 vectors
    made with its fingerprint, so a service can start on either."""
    import json

    from helpers import FAST_ARGS, make_colour_folder, run_cli

    root = tmp_path_factory.mktemp("served-memory")
    make_colour_folder(root / "images", per_class=3)
    head = run_cli("train", root / "images", *FAST_ARGS, "--cache", root / "cache",
                   "-o", root / "head", "-q")  # fmt: skip
    assert head.exit_code == 0, head.output
    fingerprint = Fingerprint.from_dict(
        json.loads((root / "head" / "head.json").read_text())["fingerprint"]
    )
    X = _vectors(8 * SERVED_SMALL, 512)
    for n in (SERVED_SMALL, 8 * SERVED_SMALL):
        index, spec, recall = build_index(X[:n], IndexSpec("ivf", nlist=128), target_recall=0.9)
        save_index(root / f"index{n}", index, spec, recall, fingerprint=fingerprint,
                   paths=(f"/img/{i}.jpg" for i in range(n)), labels=(None for _ in range(n)),
                   keys=(f"{i:064x}" for i in range(n)))  # fmt: skip
    return root


SERVED_SMALL = 10_000


def _serve_start(root: Path, n: int) -> float:
    """Peak RSS (MB) of ``headstart serve`` over the index of ``n`` once it has started and
    answered one query by vector."""
    import httpx
    from helpers import free_port, wait_until_ready

    port = free_port()
    command = [sys.executable, "-m", "headstart", "serve", "--head", str(root / "head"),
               "--index", str(root / f"index{n}"), "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, lambda: process.poll() is None, process.communicate)
        vector = _vectors(1, 512)[0].tolist()
        answer = httpx.post(f"{url}/v1/neighbors", json={"vector": vector, "k": 10})
        assert answer.status_code == 200 and len(answer.json()["neighbors"]) == 10
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        peak = next(line for line in status if line.startswith("VmHWM:"))
    finally:
        process.terminate()
        process.wait(timeout=60)
    return int(peak.split()[1]) / 1024


def test_serve_start_memory_does_not_grow_with_a_mapped_index(served: Path) -> None:
    small = _serve_start(served, SERVED_SMALL)
    large = _serve_start(served, 8 * SERVED_SMALL)
    vectors_mb = 7 * SERVED_SMALL * 512 * 4 / 2**20  # 137 MB more float32 in the larger index
    print(f"serve start peak RSS: {small:.0f} MB at {SERVED_SMALL}, {large:.0f} MB at 8x")
    assert large - small < 0.25 * vectors_mb, (small, large)
