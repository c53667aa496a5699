"""Images join an index without a rebuild (``headstart index add``), and a kill at any moment
leaves a usable index: the previous one or the grown one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_ARGS, make_colour_folder, run_cli

from headstart.cache import Fingerprint
from headstart.errors import HeadstartError
from headstart.search.build import build_index
from headstart.search.exact import exact_search, l2_normalize
from headstart.search.grow import add_to_index
from headstart.search.spec import IndexSpec
from headstart.search.store import load_index, save_index

FINGERPRINT = Fingerprint({"model": "test"}, {"model": "resnet18", "weights": "none"})


def _items(start: int, stop: int):
    return [(f"/img/{i}.jpg", None, f"{i:064x}", None) for i in range(start, stop)]


def _save(directory: Path, X: np.ndarray, spec: IndexSpec) -> None:
    index, spec, recall = build_index(X, spec, target_recall=0.5)
    paths, labels, keys, _ = (list(c) for c in zip(*_items(0, len(X)), strict=True))
    save_index(directory, index, spec, recall, fingerprint=FINGERPRINT, paths=paths,
               labels=labels, keys=keys)  # fmt: skip


def test_a_flat_index_grown_answers_as_one_built_whole(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(3000, 32)).astype(np.float32)
    _save(tmp_path, X[:2000], IndexSpec("flat"))
    added = add_to_index(tmp_path, X[2000:], _items(2000, 3000))
    assert (added.added, added.count, added.generation) == (1000, 3000, 1)
    loaded = load_index(tmp_path)
    queries = np.random.default_rng(1).normal(size=(50, 32)).astype(np.float32)
    _, rows = loaded.search(queries, 10)
    expected = exact_search(l2_normalize(X), l2_normalize(queries), 10)
    np.testing.assert_array_equal(rows, expected[1])
    assert [i.path for i in loaded.items.take([1999, 2000, 2999])] == [
        "/img/1999.jpg", "/img/2000.jpg", "/img/2999.jpg"
    ]  # fmt: skip
    assert json.loads((tmp_path / "index.json").read_text())["count"] == 3000


def test_an_ivf_index_grows_through_its_trained_quantizer(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(3000, 32)).astype(np.float32)
    _save(tmp_path, X[:2000], IndexSpec("ivf", nlist=16))
    add_to_index(tmp_path, X[2000:], _items(2000, 3000))
    add_to_index(tmp_path, X[:0], [])  # nothing to add: nothing changes
    loaded = load_index(tmp_path)
    assert loaded.index.ntotal == 3000 and loaded.document["generation"] == 1
    _, rows = loaded.search(X[2000:], 1)
    assert (rows[:, 0] == np.arange(2000, 3000)).all()  # each finds itself in its own list
    # The generation before is kept (a service may still read it); no older one is.
    assert (tmp_path / "index.faiss").exists() and (tmp_path / "index.1.faiss").exists()
    add_to_index(tmp_path, X[:10], _items(3000, 3010))
    assert not (tmp_path / "index.faiss").exists() and (tmp_path / "index.2.faiss").exists()
    assert load_index(tmp_path).index.ntotal == 3010


def test_index_add_embeds_only_new_images_and_keeps_their_thumbnails(tmp_path: Path) -> None:
    make_colour_folder(tmp_path / "a", per_class=2)
    make_colour_folder(tmp_path / "b", per_class=2, start_seed=50)
    common = ["--cache", tmp_path / "cache"]
    built = run_cli("index", "build", tmp_path / "a", *FAST_ARGS, *common,
                    "-o", tmp_path / "index", "-q")  # fmt: skip
    assert built.exit_code == 0, built.output
    before = load_index(tmp_path / "index").index.ntotal
    grown = run_cli("index", "add", tmp_path / "index", tmp_path / "b", *common, "-q")
    assert grown.exit_code == 0, grown.output
    assert f"({0} already indexed)" in grown.output
    loaded = load_index(tmp_path / "index")
    assert loaded.index.ntotal == 2 * before and len(loaded.thumbnails) == 2 * before
    query = sorted((tmp_path / "b").rglob("*.jpg"))[0]
    found = run_cli("knn", tmp_path / "index", query, "-k", "1", *common, "-q")
    assert found.exit_code == 0 and str(query) in found.output, found.output
    row = [item.path for b in loaded.items.blocks() for item in b].index(str(query))
    assert row >= before and loaded.thumbnails.get(row)  # its thumbnail came with it
    again = run_cli("index", "add", tmp_path / "index", tmp_path / "a", tmp_path / "b",
                    *common, "-q")  # fmt: skip
    assert again.exit_code == 0 and f"added 0 vectors ({2 * before} already indexed)" in (
        again.output
    )


_ADD = """\
import sys
import numpy as np
from headstart.search.grow import add_to_index
n = int(sys.argv[2])
X = np.random.default_rng(1).normal(size=(n, 64)).astype(np.float32)
print("adding", flush=True)
add_to_index(sys.argv[1], X, [(f"/new/{i}.jpg", None, f"{i:063x}n", None) for i in range(n)])
print("added", flush=True)
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("kill") / "index"
    X = np.random.default_rng(0).normal(size=(100_000, 64)).astype(np.float32)
    _save(directory, X, IndexSpec("flat"))
    return directory


def test_kill_9_during_an_add_leaves_a_usable_index(pristine: Path, tmp_path: Path) -> None:
    def run(directory: Path, kill_after: float | None) -> None:
        started = subprocess.Popen(
            [sys.executable, "-c", _ADD, str(directory), "100000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert started.stdout.readline().strip() == "adding"
        if kill_after is None:
            assert started.wait() == 0, started.stderr.read()
            return
        time.sleep(kill_after)
        started.send_signal(signal.SIGKILL)
        started.wait()

    whole = tmp_path / "whole"
    shutil.copytree(pristine, whole)
    began = time.perf_counter()
    run(whole, None)
    seconds = time.perf_counter() - began
    assert load_index(whole).index.ntotal == 200_000
    # Killed at points spread over the add, and once after it (where exactly does not matter:
    # each outcome is the index before or the index after, whole).
    outcomes = set()
    for fraction in (0.2, 0.4, 0.6, 0.8, 0.95, 3.0):
        directory = tmp_path / f"killed{fraction}"
        shutil.copytree(pristine, directory)
        run(directory, seconds * fraction)
        loaded = load_index(directory)
        assert loaded.index.ntotal in (100_000, 200_000)
        assert len(loaded.items) == loaded.index.ntotal
        last = loaded.items[loaded.index.ntotal - 1].path
        assert last == ("/img/99999.jpg" if loaded.index.ntotal == 100_000 else "/new/99999.jpg")
        outcomes.add(loaded.index.ntotal)
    print("outcomes after kill -9:", sorted(outcomes))


def test_a_second_add_at_once_is_refused(tmp_path: Path) -> None:
    import fcntl

    X = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    _save(tmp_path, X, IndexSpec("flat"))
    with open(tmp_path / ".add.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(HeadstartError, match="another index add is running"):
            add_to_index(tmp_path, X[:5], _items(100, 105))
    assert add_to_index(tmp_path, X[:5], _items(100, 105)).count == 105
