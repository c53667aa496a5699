"""Many processes on one cache: --part, torchrun ranks, compaction and verification."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from helpers import SMALL_FP32, TINY_MODELS, make_folder, published_shards

from headstart.cache import EmbeddingCache, Fingerprint, ShardWriter, content_key
from headstart.cache.maintenance import compact, verify
from headstart.cache.shards import publish_shard
from headstart.cli import main
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, PreprocessOverrides, extract
from headstart.extract.parts import Partition, parse_part

# fp32 whatever the processor (auto is bf16 on CPUs with AVX512-BF16): parts, ranks and one
# process must make the very same vectors. options() below says the same.
MODEL = [
    *["--model", f"{TINY_MODELS}:tiny_features", *SMALL_FP32],
    *["--store-dtype", "float32", "--workers", "0", "-q"],
]


def torchrun_extract(ranks: int, *args: str) -> list[str]:
    """The command line of ``headstart extract ARGS`` run by torchrun on ``ranks`` processes."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*torchrun, "--nproc-per-node", str(ranks), "-m", "headstart", "extract", *args]


def options(part: Partition | None = None) -> ExtractOptions:
    return ExtractOptions(
        model=f"{TINY_MODELS}:tiny_features",
        weights="none",
        preprocess=PreprocessOverrides(40, 32),
        precision="fp32",
        store_dtype="float32",
        workers=0,
        part=part,
    )


def vectors_by_key(cache: Path) -> dict[bytes, np.ndarray]:
    out = {}
    for chunk in EmbeddingCache(cache).open().iter_chunks():
        out.update(zip(chunk.keys.tolist(), chunk.embeddings, strict=True))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "images"
    make_folder(root, {"a": 18, "b": 18})
    shutil.copy(root / "a" / "a_000.jpg", root / "b" / "duplicate.jpg")
    return root


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory) -> dict[bytes, np.ndarray]:
    cache = tmp_path_factory.mktemp("reference")
    extract([str(images)], options(), cache)
    return vectors_by_key(cache)


def test_parts_are_disjoint_and_together_complete(images: Path, tmp_path: Path, reference) -> None:
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "a" / "broken.jpg").write_bytes(b"not a JPEG")
    answered = embedded = failed = 0
    keys = []
    for i in range(3):
        part = Partition(i, 3)
        summary = extract([str(folder)], options(part), tmp_path / f"part{i}")
        assert summary.listed == 38  # every part lists the whole source ...
        answered += summary.answered  # ... and answers for its own share of it
        embedded, failed = embedded + summary.embedded, failed + summary.failed
        keys.append(set(vectors_by_key(tmp_path / f"part{i}")))
        assert all(part.owns_key(key.decode()) for key in keys[-1])  # owned by content key
    assert answered == 38 and failed == 1  # every file counted, the broken one reported, once
    # The two identical files share a key, so one part embeds them, once.
    assert embedded == len(reference) == 36
    assert not (keys[0] & keys[1]) | (keys[0] & keys[2]) | (keys[1] & keys[2])
    assert keys[0] | keys[1] | keys[2] == set(reference)


def test_parts_share_a_cache_and_a_later_split_embeds_nothing_new(
    images: Path, tmp_path: Path, reference
) -> None:
    # One after the other on one cache: the second part sees the keys the first recorded and
    # still answers for exactly its own share, so each line adds up and so do the two.
    answered = 0
    for i in (1, 2):
        result = CliRunner().invoke(
            main, ["extract", str(images), *MODEL, "--part", f"{i}/2", "--cache", str(tmp_path)]
        )
        assert result.exit_code == 0, result.output
        line = re.search(
            rf"part {i}/2: (\d+) of 37 listed · embedded (\d+) · from cache (\d+) · failed 0",
            result.output,
        )
        assert line, result.output
        own, embedded, from_cache = map(int, line.groups())
        assert own == embedded + from_cache
        answered += own
    assert answered == 37
    stored = vectors_by_key(tmp_path)
    assert stored.keys() == reference.keys()
    for key, vector in reference.items():
        np.testing.assert_allclose(stored[key], vector, rtol=1e-5, atol=1e-6)
    for i in range(5):
        assert extract([str(images)], options(Partition(i, 5)), tmp_path).embedded == 0
    with pytest.raises(HeadstartError, match="I/N"):
        parse_part("0/3")


def test_torchrun_ranks_match_one_process_and_reruns_embed_nothing(
    images: Path, tmp_path: Path, reference
) -> None:
    cache = tmp_path / "cache"
    run = subprocess.run(
        torchrun_extract(2, str(images), *MODEL, "--cache", str(cache)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("listed 37 ·") == 1 and "(2 parts)" in run.stdout  # rank 0 only
    stored = vectors_by_key(cache)
    assert stored.keys() == reference.keys()
    for key, vector in reference.items():
        np.testing.assert_allclose(stored[key], vector, rtol=1e-5, atol=1e-6)

    assert extract([str(images)], options(), cache).embedded == 0
    # Three ranks, and a broken file: the job finishes with status 0 (torchrun would take any
    # other status for a crashed rank and kill the rest), and rank 0 reports the file.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "broken.jpg").write_bytes(b"not a JPEG")
    rerun = subprocess.run(
        torchrun_extract(3, str(images), str(broken), *MODEL, "--cache", str(cache)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "embedded 0 · from cache 37 · failed 1" in rerun.stdout
    assert "1 files could not be used" in rerun.stderr and "Traceback" not in rerun.stderr


def test_a_killed_rank_fails_the_job_and_the_rerun_completes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"a": 30, "b": 30})
    cache = tmp_path / "cache"
    slow = [
        a if a != f"{TINY_MODELS}:tiny_features" else f"{TINY_MODELS}:slow_features" for a in MODEL
    ]
    command = torchrun_extract(
        2,
        str(images),
        *slow,
        "--batch-size",
        "2",
        "--shard-size",
        "2",
        "--cache",
        str(cache),
    )
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not published_shards(cache):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    ranks = [
        p
        for p in psutil.Process(job.pid).children(recursive=True)
        if "headstart" in " ".join(p.cmdline())
    ]
    os.kill(ranks[-1].pid, signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0
    # torchrun's report names the killed rank as the root cause: its pid and the signal.
    killed = rf"exitcode\s*:\s*-{signal.SIGKILL:d} \(pid: {ranks[-1].pid}\)"
    assert re.search(killed, stderr), stderr

    done_before = len(EmbeddingCache(cache).open())
    rerun = subprocess.run(
        [sys.executable, "-m", "headstart", "extract", str(images), *slow, "--cache", str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0 and f"from cache {done_before}" in rerun.stdout
    assert len(EmbeddingCache(cache).open()) == 60


def test_compact_is_bit_identical_and_readers_keep_reading(tmp_path: Path) -> None:
    fingerprint = Fingerprint({"model": "compact-test"})
    cache = EmbeddingCache(tmp_path)
    store = cache.create(fingerprint)
    keys = np.array([content_key(str(i).encode()) for i in range(400)], dtype="S64")
    vectors = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    with ShardWriter(store, shard_rows=7) as writer:  # float16 shards
        writer.add(keys[:390], vectors[:390])
    loud = vectors[390:] * 1e6  # overflows float16: a float32 shard
    publish_shard(store.shards_directory, fingerprint.id, keys[390:], loud)
    publish_shard(store.shards_directory, fingerprint.id, keys[:5], vectors[:5] + 1)  # duplicates
    store.refresh()
    expected = store.get(keys)
    shards_before = len(store.shards)

    errors, reads = [], 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        view = cache.open(fingerprint)
        while not stop.is_set():
            try:
                assert np.array_equal(view.get(keys), expected)
                assert sum(len(c.keys) for c in view.iter_chunks()) == 400
                reads += 1
            except Exception as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)
    result = compact(cache, fingerprint, shard_rows=100)
    time.sleep(0.2)
    stop.set()
    thread.join()
    assert not errors and reads > 0
    assert (result.shards_before, result.shards_after, result.rows, result.duplicates_dropped) == (
        shards_before,
        4,
        400,
        5,
    )
    after = cache.open(fingerprint)
    assert len(after.shards) == 4 and np.array_equal(after.get(keys), expected)


def test_verify_reports_corruption_without_changing_anything(images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extract([str(images)], options(), cache)
    clean = CliRunner().invoke(main, ["cache", "verify", str(cache)])
    assert clean.exit_code == 0 and "0 problems" in clean.output

    shard = published_shards(cache)[0]
    shard.write_bytes(shard.read_bytes()[:200])
    (shard.parent / ".tmp-leftover.h5").write_bytes(b"")
    listing = sorted(p.name for p in cache.rglob("*"))
    broken = CliRunner().invoke(main, ["cache", "verify", str(cache)])
    assert broken.exit_code == 1 and "cannot be read" in broken.output
    assert "interrupted write" in broken.output
    assert sorted(p.name for p in cache.rglob("*")) == listing
    assert verify(EmbeddingCache(cache)).shards == 1
