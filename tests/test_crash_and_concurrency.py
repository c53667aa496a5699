"""Real processes and real damage: a SIGKILL mid-run, two runs sharing one cache, a bad shard."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from helpers import SMALL_FP32, TINY_MODELS, make_folder, published_shards

from headstart.cache import EmbeddingCache
from headstart.cache.shards import read_shard_keys
from headstart.cli import main

# fp32 whatever the processor (SMALL_FP32): the vectors of different runs are compared.
COMMON = [*SMALL_FP32, "--store-dtype", "float32", "--workers", "1", "-q"]


def headstart(*args: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "headstart", "extract", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return out


def embeddings_by_key(cache: Path) -> dict[bytes, np.ndarray]:
    out = {}
    for chunk in EmbeddingCache(cache).open().iter_chunks():
        out.update(zip(chunk.keys.tolist(), chunk.embeddings, strict=True))
    return out


def test_sigkill_leaves_a_readable_cache_and_the_rerun_completes_it(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"a": 30, "b": 30})
    killed_cache, reference_cache = tmp_path / "killed", tmp_path / "reference"
    slow = f"{TINY_MODELS}:slow_features"

    process = headstart(
        images,
        "--model",
        slow,
        *COMMON,
        "--batch-size",
        "4",
        "--shard-size",
        "8",
        "--cache",
        killed_cache,
    )
    deadline = time.monotonic() + 120
    while len(published_shards(killed_cache)) < 2:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no shard was published"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    shards = published_shards(killed_cache)
    partial = sum(len(read_shard_keys(p)) for p in shards)  # every published shard opens
    assert 16 <= partial < 60

    rerun = finish(headstart(images, "--model", slow, *COMMON, "--cache", killed_cache))
    assert f"from cache {partial}" in rerun
    # The same weights, uninterrupted (tiny_features is slow_features without the sleep).
    finish(
        headstart(
            images, "--model", f"{TINY_MODELS}:tiny_features", *COMMON, "--cache", reference_cache
        )
    )
    resumed, reference = embeddings_by_key(killed_cache), embeddings_by_key(reference_cache)
    assert resumed.keys() == reference.keys() and len(resumed) == 60
    for key, vector in reference.items():
        np.testing.assert_allclose(resumed[key], vector, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stop", ["sigterm-to-the-process-group", "sigkill-a-decoding-worker"])
def test_a_stopped_run_says_so_in_one_line_and_keeps_its_work(tmp_path: Path, stop: str) -> None:
    # A scheduler stops a job with SIGTERM to the whole process group, decoding workers
    # included; the OOM killer takes one worker alone. torch used to raise the workers' deaths
    # inside the model or the final publishing, as a traceback or as "the model failed".
    images = tmp_path / "images"
    make_folder(images, {"a": 30, "b": 30})
    cache = tmp_path / "cache"
    slow = ["--model", f"{TINY_MODELS}:slow_features", *COMMON, "--no-compile"]
    command = [sys.executable, "-m", "headstart", "extract", str(images), *slow]
    command += ["--batch-size", "4", "--shard-size", "4", "--cache", str(cache)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not published_shards(cache):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    if stop == "sigterm-to-the-process-group":
        os.killpg(process.pid, signal.SIGTERM)
    else:
        (worker,) = psutil.Process(process.pid).children()
        worker.kill()
    _, err = process.communicate(timeout=120)

    group = stop == "sigterm-to-the-process-group"
    assert process.returncode == (130 if group else 1), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert ("interrupted" if group else "a data loading worker process stopped") in err
    kept = len(EmbeddingCache(cache).open())
    rerun = finish(headstart(images, *slow, "--cache", cache))
    assert f"embedded {60 - kept} · from cache {kept}" in rerun


def test_two_runs_at_once_share_a_cache(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"a": 20, "b": 20})
    cache = tmp_path / "cache"
    model = f"{TINY_MODELS}:slow_features"
    runs = [
        headstart(
            images,
            "--model",
            model,
            *COMMON,
            "--batch-size",
            "4",
            "--shard-size",
            "4",
            "--cache",
            cache,
        )
        for _ in range(2)
    ]
    for process in runs:
        finish(process)

    store = EmbeddingCache(cache).open()
    assert len(store) == 40
    assert not list(cache.glob("*/shards/.tmp-*"))
    rerun = finish(headstart(images, "--model", model, *COMMON, "--cache", cache))
    assert "embedded 0 · from cache 40" in rerun


def test_a_damaged_shard_costs_only_its_own_images(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"a": 6, "b": 6})
    cache = tmp_path / "cache"
    args = ["extract", str(images), "--model", f"{TINY_MODELS}:tiny_features", *COMMON]
    args += ["--batch-size", "4", "--shard-size", "4", "--cache", str(cache)]
    runner = CliRunner()
    assert runner.invoke(main, args).exit_code == 0
    before = embeddings_by_key(cache)
    damaged = published_shards(cache)[0]
    lost = set(read_shard_keys(damaged).tolist())
    damaged.write_bytes(damaged.read_bytes()[:300])  # a bad copy: truncated

    info = runner.invoke(main, ["info", str(cache)])
    assert info.exit_code == 0 and "2 shards + 1 unreadable" in info.output
    assert len(EmbeddingCache(cache).open()) == 12 - len(lost)
    compact = runner.invoke(main, ["cache", "compact", str(cache)])
    assert compact.exit_code == 1 and "cannot be read" in compact.output
    assert damaged.exists()  # nothing deleted, nothing merged

    rerun = runner.invoke(main, args)
    assert rerun.exit_code == 0, rerun.output
    assert f"embedded {len(lost)} · from cache {12 - len(lost)}" in rerun.output
    assert str(damaged) in rerun.output  # the warning names the file
    after = embeddings_by_key(cache)
    assert after.keys() == before.keys()
    for key, vector in before.items():
        np.testing.assert_array_equal(after[key], vector)
