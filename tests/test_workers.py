"""DataLoader workers fork while the process runs one thread, and start from a fork server when
others run (an object-store listing's event loop, a server beside the job): a forked child
inherits their half-done state."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_FP32, TINY_MODELS, WhereAmI, make_folder, run_cli

from headstart.cache import EmbeddingCache
from headstart.extract.sources import ImageItem
from headstart.extract.worklist import WorkList
from headstart.workers import loader_workers

TINY = ["--model", f"{TINY_MODELS}:tiny_features", *SMALL_FP32, "-q"]

START_METHOD = """
import threading, time
from tqdm import tqdm
from headstart.workers import worker_context
with tqdm(range(1)) as bar:  # tqdm's monitor thread sleeps: no reason to leave fork
    print(worker_context().get_start_method())
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
print(worker_context().get_start_method())
"""


def test_workers_fork_until_another_thread_runs() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", START_METHOD], capture_output=True, text=True, check=True
    )
    assert shown.stdout.split() == ["fork", "forkserver"]


def test_a_job_beside_a_running_thread_embeds_through_fork_server_workers(tmp_path: Path) -> None:
    make_folder(tmp_path / "images", {"cat": 4, "dog": 3})
    stop = threading.Event()
    beside = threading.Thread(target=stop.wait, daemon=True)  # a server, a download pool...
    beside.start()
    try:
        result = run_cli(
            "extract", tmp_path / "images", *TINY, "-j", "2", "--cache", tmp_path / "c"
        )
    finally:
        stop.set()
    assert result.exit_code == 0, result.output
    assert "listed 7 · embedded 7 · from cache 0 · failed 0" in result.output

    alone = run_cli("extract", tmp_path / "images", *TINY, "-j", "0", "--cache", tmp_path / "c0")
    assert alone.exit_code == 0, alone.output
    vectors = []
    for cache in (tmp_path / "c", tmp_path / "c0"):
        chunks = EmbeddingCache(cache).open().iter_chunks()
        vectors.append({k: v for c in chunks for k, v in zip(c.keys, c.embeddings, strict=True)})
    assert vectors[0].keys() == vectors[1].keys()
    for key, vector in vectors[0].items():
        np.testing.assert_array_equal(vector, vectors[1][key])


def test_fork_server_workers_see_the_environment_and_folder_of_their_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
    seen = []
    try:
        for mark in ("first", "second"):  # the fork server, started by the first, stays up
            monkeypatch.setenv("HEADSTART_MARK", mark)
            (tmp_path / mark).mkdir()
            monkeypatch.chdir(tmp_path / mark)
            loader = torch.utils.data.DataLoader(WhereAmI(), batch_size=None, **loader_workers(2))
            assert loader.multiprocessing_context.get_start_method() == "forkserver"
            seen.append({tuple(item) for item in loader})
    finally:
        stop.set()
    assert seen == [{("first", str(tmp_path / "first"))}, {("second", str(tmp_path / "second"))}]


def test_a_work_list_travels_as_paths_and_reads_the_same(tmp_path: Path) -> None:
    work = WorkList(tmp_path)
    items = [ImageItem(f"/data/{n}.jpg", None if n % 3 else "cat") for n in range(1000)]
    for item in items:
        work.append(item)
    work.seal()
    sent = pickle.dumps(work)
    assert len(sent) < 500  # not 8 bytes an item
    received = pickle.loads(sent)
    assert len(received) == 1000
    assert [received[n] for n in (0, 1, 500, 999)] == [items[n] for n in (0, 1, 500, 999)]
    assert [work[n] for n in range(1000)] == items
