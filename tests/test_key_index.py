"""The on-disk key index: what opening a store reads, how it follows new and removed shards,
and how it recovers from damage."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from headstart.cache import EmbeddingCache, Fingerprint, content_key
from headstart.cache.key_index import GRACE_S, INDEX_DIRECTORY, MAX_RUNS, open_key_index
from headstart.cache.maintenance import AUTO_COMPACT_SHARDS, compact, compact_small_shards
from headstart.cache.shards import publish_shard, shard_paths
from headstart.cache.store import SeenKeys

FP = Fingerprint({"model": "test-key-index", "precision": "fp32"})


def keys_for(names) -> np.ndarray:
    return np.array([content_key(str(n).encode()) for n in names], dtype="S64")


def publish(store, names, value: float | None = None, writer: str | None = None) -> np.ndarray:
    keys = keys_for(names)
    vectors = np.stack([np.full(3, float(n) if value is None else value) for n in names])
    vectors = vectors.astype(np.float32)
    publish_shard(store.shards_directory, FP.id, keys, vectors, "float32", writer=writer)
    return keys


def runs_of(store) -> list[str]:
    manifest = json.loads((store.directory / INDEX_DIRECTORY / "manifest.json").read_text())
    return [run["name"] for run in manifest["runs"]]


def test_new_shards_add_a_run_and_many_runs_merge_into_one(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    expected: dict[bytes, float] = {}
    for step in range(MAX_RUNS + 2):
        names = range(step * 10, step * 10 + 10)
        for key, name in zip(publish(store, names).tolist(), names, strict=True):
            expected[key] = float(name)
        before = runs_of(store) if step else []
        store = cache.open(FP)
        after = runs_of(store)
        if len(before) < MAX_RUNS:  # one new run beside the old ones, which stay as they were
            assert after[1:] == before and len(after) == len(before) + 1
        else:  # one too many: all merged into one
            assert len(after) == 1
        assert len(store) == len(expected)

    keys = np.array(sorted(expected), dtype="S64")
    np.testing.assert_array_equal(store.get(keys[::-1])[:, 0], [expected[k] for k in keys[::-1]])
    assert store.contains(np.concatenate([keys[:3], keys_for(["absent"])])).tolist() == [
        True,
        True,
        True,
        False,
    ]
    # Sorted listing a few keys at a time walks the merge window by window.
    listed = np.concatenate(list(store.iter_sorted_keys(block_rows=7)))
    np.testing.assert_array_equal(listed, keys)


def test_the_newest_copy_of_a_key_wins_across_runs(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    publish(store, ["a", "b"], value=1.0)
    store = cache.open(FP)  # the first run indexes the old copies
    publish(store, ["b", "c"], value=2.0)
    store = cache.open(FP)  # a second run holds the newer copy of b
    assert len(store) == 3 and len(runs_of(store)) == 2
    np.testing.assert_array_equal(store.get(keys_for(["a", "b", "c"]))[:, 0], [1.0, 2.0, 2.0])
    chunks = list(store.iter_chunks())
    served = {k: v[0] for c in chunks for k, v in zip(c.keys.tolist(), c.embeddings, strict=True)}
    assert sorted(served.values()) == [1.0, 2.0, 2.0]  # b once, from the newer shard


def test_an_old_cache_gets_its_index_on_first_open(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    keys = publish(store, range(5))
    store = cache.open(FP)
    index_directory = store.directory / INDEX_DIRECTORY
    for path in index_directory.iterdir():  # as a cache written before the index existed
        path.unlink()
    index_directory.rmdir()

    store = cache.open(FP)
    assert (index_directory / "manifest.json").is_file() and len(store) == 5
    np.testing.assert_array_equal(store.get(keys)[:, 0], np.arange(5))


@pytest.mark.parametrize("damage", ["manifest", "run", "missing run"])
def test_a_damaged_index_is_rebuilt_with_a_note(tmp_path: Path, damage: str, caplog) -> None:
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    keys = np.concatenate([publish(store, range(4)), publish(store, range(4, 9))])
    store = cache.open(FP)
    index_directory = store.directory / INDEX_DIRECTORY
    run = index_directory / f"{runs_of(store)[0]}.keys"
    if damage == "manifest":
        (index_directory / "manifest.json").write_text('{"format": "headstart-keyin')
    elif damage == "run":
        run.write_bytes(run.read_bytes()[:100])
    else:
        run.unlink()

    with caplog.at_level(logging.WARNING, logger="headstart.cache.key_index"):
        store = cache.open(FP)
    assert "rebuilding" in caplog.text
    assert len(store) == 9
    np.testing.assert_array_equal(store.get(keys)[:, 0], np.arange(9))


def test_a_compaction_leads_to_a_rebuilt_index_and_readers_follow(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    keys = np.concatenate([publish(store, range(i * 3, i * 3 + 3)) for i in range(5)])
    publish(store, [0, 1], value=7.0)  # newer copies of two keys
    reader = cache.open(FP)

    result = compact(cache, FP)
    assert (result.shards_before, result.shards_after, result.rows) == (6, 1, 15)
    assert result.duplicates_dropped == 2
    # The old view's shards are gone: a read refreshes it through the rebuilt index.
    values = reader.get(keys)[:, 0]
    np.testing.assert_array_equal(values, [7.0, 7.0, *range(2, 15)])
    assert len(shard_paths(reader.shards_directory)) == 1 and len(cache.open(FP)) == 15


def test_small_shards_are_merged_once_there_are_enough(tmp_path: Path) -> None:
    """Only this process's writer's shards: another writer may be running (on another host)."""
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    own = cache.writer().id
    others = [publish(store, [100 + i], writer="elsewhere-0") for i in range(AUTO_COMPACT_SHARDS)]
    for i in range(AUTO_COMPACT_SHARDS - 1):
        publish(store, [i], writer=own)
    assert compact_small_shards(cache, FP) is None  # not yet worth a rewrite
    publish(store, [AUTO_COMPACT_SHARDS - 1], writer=own)

    result = compact_small_shards(cache, FP)
    assert result is not None and result.shards_after == AUTO_COMPACT_SHARDS + 1
    store = cache.open(FP)
    names = [path.name for path in shard_paths(store.shards_directory)]
    assert sum("-elsewhere-0-" in name for name in names) == AUTO_COMPACT_SHARDS
    assert sum(f"-{own}-" in name for name in names) == 1
    assert len(store) == 2 * AUTO_COMPACT_SHARDS
    np.testing.assert_array_equal(
        store.get(keys_for(range(AUTO_COMPACT_SHARDS)))[:, 0], np.arange(AUTO_COMPACT_SHARDS)
    )
    assert store.contains(np.concatenate(others)).all()


def test_an_index_that_cannot_be_written_is_kept_privately(tmp_path: Path) -> None:
    store = EmbeddingCache(tmp_path / "cache").create(FP)
    keys = publish(store, range(4))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the index directory would go")

    index = open_key_index(store.shards_directory, blocked / INDEX_DIRECTORY)
    found, shard, row = index.locate(keys[::-1])
    assert found.all() and shard.tolist() == [0] * 4 and row.tolist() == [3, 2, 1, 0]
    private = index.directory
    assert private.is_dir() and not private.is_relative_to(tmp_path)
    index.close()
    del index
    assert not private.exists()


def test_seen_keys_forgets_what_published_shards_now_hold(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(SeenKeys, "_REFRESH_AT", 4)
    store = EmbeddingCache(tmp_path).create(FP)
    seen = store.seen_keys()
    first = keys_for(range(3))
    seen.add(first)
    publish(store, range(3))  # as the writer publishes what the run embedded
    later = keys_for(range(3, 5))
    seen.add(later)  # the fifth addition refreshes: the published three leave memory
    assert seen.contains(np.concatenate([first, later, keys_for(["x"])])).tolist() == [
        *[True] * 5,
        False,
    ]
    assert len(seen._recent) == 2


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's size (see bench/peak_memory).
_OPEN_AND_LOOK_UP = """
import sys
from headstart.cache import EmbeddingCache
store = EmbeddingCache(sys.argv[1]).open()
keys = next(store.iter_sorted_keys(block_rows=1000))
assert store.contains(keys).all() and len(store) == int(sys.argv[2])
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
"""


def test_opening_a_store_costs_the_same_at_any_size(tmp_path: Path) -> None:
    """Peak memory of opening a store and looking up keys, at two sizes 8x apart (the keys of
    the larger alone take 25 MB in memory, which the old in-memory index held twice over)."""
    peaks = []
    for count in (50_000, 400_000):
        cache = EmbeddingCache(tmp_path / str(count))
        store = cache.create(FP)
        rng = np.random.default_rng(count)
        for start in range(0, count, 100_000):
            size = min(100_000, count - start)
            keys = np.array(
                [f"{k:064x}".encode() for k in rng.integers(0, 2**62, size)], dtype="S64"
            )
            publish_shard(store.shards_directory, FP.id, keys, np.zeros((size, 2), np.float32))
        length = len(cache.open(FP))  # builds the index, outside the measured process
        script = [sys.executable, "-c", _OPEN_AND_LOOK_UP, str(cache.root), str(length)]
        peaks.append(int(subprocess.run(script, capture_output=True, check=True).stdout))
    grown_mb = (peaks[1] - peaks[0]) / 1024
    assert grown_mb < 4, f"peak RSS grew {grown_mb:.1f} MB from 50k to 400k keys"


def test_merged_runs_keep_the_newest_copy_of_overlapping_keys(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    rng = np.random.default_rng(7)
    newest: dict[bytes, float] = {}
    for step in range(MAX_RUNS + 1):  # the last step merges every run, overlapping keys and all
        names = rng.choice(60, size=25, replace=False)
        keys = publish(store, names, value=float(step))
        newest.update(dict.fromkeys(keys.tolist(), float(step)))
        store = cache.open(FP)
    assert len(runs_of(store)) == 1 and len(store) == len(newest)
    keys = np.array(sorted(newest), dtype="S64")
    np.testing.assert_array_equal(store.get(keys)[:, 0], [newest[k] for k in keys])
    np.testing.assert_array_equal(np.concatenate(list(store.iter_sorted_keys(5))), keys)
    served = np.concatenate([chunk.keys for chunk in store.iter_chunks()])
    assert len(served) == len(newest) and set(served.tolist()) == set(newest)


def _run_files(store) -> set[str]:
    return {p.name.rsplit(".", 1)[0] for p in (store.directory / INDEX_DIRECTORY).glob("run-*")}


def test_superseded_runs_are_removed_only_after_the_grace_period(tmp_path: Path) -> None:
    """Another updater (on another host, where locks are not to be trusted) may be about to
    publish a manifest naming a run: nothing is deleted until it is GRACE_S old."""
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    for step in range(MAX_RUNS + 1):
        publish(store, range(step * 10, step * 10 + 10))
        store = cache.open(FP)
    assert len(runs_of(store)) == 1  # merged
    superseded = _run_files(store) - set(runs_of(store))
    assert len(superseded) == MAX_RUNS  # the runs merged away are still there
    index_directory = store.directory / INDEX_DIRECTORY
    long_ago = time.time() - 2 * GRACE_S
    for name in superseded:
        for suffix in (".keys", ".loc"):
            os.utime(index_directory / f"{name}{suffix}", (long_ago, long_ago))
    for name in runs_of(store):  # the published runs stay, however old
        os.utime(index_directory / f"{name}.keys", (long_ago, long_ago))

    publish(store, [1000])
    store = cache.open(FP)
    assert _run_files(store) == set(runs_of(store)) and len(store) == 10 * (MAX_RUNS + 1) + 1


_UPDATER = """
import sys
import numpy as np
from pathlib import Path
from headstart.cache import EmbeddingCache, Fingerprint, content_key
from headstart.cache.shards import publish_shard

root, who = Path(sys.argv[1]), sys.argv[2]
fp = Fingerprint({"model": "test-key-index", "precision": "fp32"})
cache = EmbeddingCache(root)
mine = []
for step in range(12):
    keys = np.array([content_key(f"{who}-{step}-{n}".encode()) for n in range(5)], dtype="S64")
    vectors = np.full((5, 3), step, dtype=np.float32)
    publish_shard(cache.root / fp.id / "shards", fp.id, keys, vectors, "float32", writer=who)
    mine.append(keys)
    store = cache.open(fp)
    assert store.contains(np.concatenate(mine)).all(), (who, step)
    assert (store.get(keys)[:, 0] == step).all()
print("ok")
"""


def test_processes_updating_the_index_without_its_lock_agree(tmp_path: Path) -> None:
    """Where the filesystem gives no lock, concurrent updates still leave a complete index."""
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    (store.directory / INDEX_DIRECTORY / ".lock").mkdir(parents=True)  # nobody can lock it
    updaters = [
        subprocess.Popen(
            [sys.executable, "-c", _UPDATER, str(tmp_path), f"host{n}-0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for updater in updaters:
        out, err = updater.communicate(timeout=300)
        assert updater.returncode == 0 and out.strip() == "ok", err
        # Nothing an updater published was pulled from under another (which would read as
        # damage, and cost a rebuild from every shard).
        assert "damaged" not in err and "private copy" not in err, err
    store = cache.open(FP)
    assert len(store) == 4 * 12 * 5
    for n in range(4):
        keys = np.array(
            [content_key(f"host{n}-0-{s}-{k}".encode()) for s in range(12) for k in range(5)],
            dtype="S64",
        )
        np.testing.assert_array_equal(store.get(keys)[:, 0], np.repeat(np.arange(12), 5))
    manifest = json.loads((store.directory / INDEX_DIRECTORY / "manifest.json").read_text())
    assert set(runs_of(store)) <= _run_files(store) and manifest["count"] == 240
