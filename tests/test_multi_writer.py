"""A cache that many machines write at once: each writer writes only files of its own (its
catalog, shards named after it); readers merge every writer's catalog, the newest record
winning. Hosts are played on one machine through HEADSTART_HOST."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import SMALL_FP32, TINY_MODELS, make_folder, published_shards
from PIL import Image

from headstart.cache import EmbeddingCache
from headstart.cache.catalog import (
    FailureRecord,
    FileCatalog,
    FileRecord,
    SampleRecord,
    ShardRecord,
)
from headstart.cache.writers import HOST_ENV, list_writers, writer_of_shard
from headstart.cli import EXIT_SOME_FAILED, main
from headstart.extract.labelled import iter_labelled


def _catalog_as(cache: Path, host: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(HOST_ENV, host)
    return EmbeddingCache(cache).catalog()


def test_each_writer_has_its_own_catalog_and_the_newest_record_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    with _catalog_as(cache, "alpha", monkeypatch) as alpha:
        alpha.record(
            files=[FileRecord("/a.jpg", 1, 1, "k-a", "cat"), FileRecord("/b.jpg", 1, 1, "k-b")],
            failures=[FailureRecord("/c.jpg", 1, 1, "cannot decode")],
        )
        with _catalog_as(cache, "beta", monkeypatch) as beta:
            # Later: beta saw b.jpg fail, c.jpg read fine, a.jpg relabelled.
            beta.record(
                files=[FileRecord("/c.jpg", 2, 2, "k-c"), FileRecord("/a.jpg", 1, 1, "k-a", "dog")],
                failures=[FailureRecord("/b.jpg", 3, 3, "truncated")],
            )
            assert alpha.path != beta.path and alpha.path.parent.name == "alpha-0"
    assert [w.id for w in list_writers(cache)] == ["alpha-0", "beta-0"]
    assert all(w.finished_unix is not None for w in list_writers(cache))

    with EmbeddingCache(cache).catalog() as reader:
        known = reader.lookup(["/a.jpg", "/b.jpg", "/c.jpg"])
        assert {p: (r.key, r.label) for p, r in known.items()} == {
            "/a.jpg": ("k-a", "dog"),
            "/c.jpg": ("k-c", None),
        }
        assert list(reader.lookup_failures(["/a.jpg", "/b.jpg", "/c.jpg"])) == ["/b.jpg"]
        assert [r.path for block in reader.iter_files(chunk=1) for r in block] == [
            "/a.jpg",
            "/c.jpg",
        ]
        assert [(f.path, f.reason) for f in reader.iter_failures()] == [("/b.jpg", "truncated")]
        assert (reader.count_files(), reader.count_failures()) == (2, 1)
        assert reader.path is None  # a reader made no catalog of its own
    assert sorted(p.parent.name for p in EmbeddingCache(cache).catalog_paths()) == [
        "alpha-0",
        "beta-0",
    ]


def test_a_shard_is_read_from_the_writer_that_read_it_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    old = [SampleRecord("/s.tar", f"{n}", f"{n}.jpg", f"old-{n}", "a") for n in range(3)]
    new = [SampleRecord("/s.tar", f"{n}", f"{n}.jpg", f"new-{n}", "b") for n in range(2)]
    with _catalog_as(cache, "alpha", monkeypatch) as alpha:
        alpha.record(
            samples=old,
            failures=[FailureRecord("/s.tar#2.jpg", 9, 9, "bad member")],
            shards=[ShardRecord("/s.tar", 9, 9, 3, 1, None, "[]")],
        )
    with _catalog_as(cache, "beta", monkeypatch) as beta:
        beta.record(samples=new, shards=[ShardRecord("/s.tar", 10, 10, 2, 0, None, "[]")])
        assert beta.lookup_shard("/s.tar").size == 10
        assert beta.shard_keys("/s.tar") == ["new-0", "new-1"]
        assert [s.key for block in beta.iter_shard_samples("/s.tar") for s in block] == [
            "new-0",
            "new-1",
        ]
        # Two readings of one shard never mix; the member failure of the older one is gone.
        assert [s.key for block in beta.iter_samples() for s in block] == ["new-0", "new-1"]
        assert list(beta.iter_failures()) == [] and beta.count_samples() == 2


def test_a_cache_from_before_writers_is_read_and_settled_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    with FileCatalog(cache / "catalog.sqlite") as legacy:  # as extract wrote it until now
        legacy.record([FileRecord("/old.jpg", 1, 1, "k-old", "cat")])
    with sqlite3.connect(cache / "catalog.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    with _catalog_as(cache, "alpha", monkeypatch) as writer:
        assert writer.lookup(["/old.jpg"])["/old.jpg"].key == "k-old"
        writer.record([FileRecord("/new.jpg", 1, 1, "k-new")])
        assert sorted(writer.lookup(["/old.jpg", "/new.jpg"])) == ["/new.jpg", "/old.jpg"]
    with sqlite3.connect(cache / "catalog.sqlite") as db:  # readable from other hosts now
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()
    result = CliRunner().invoke(main, ["info", str(cache)])
    assert result.exit_code == 0, result.output
    assert "writers: 2" in result.output and "catalog.sqlite  1 files" in result.output
    assert "alpha-0  1 files, 0 tar samples, 0 failed  (pid" in result.output


def test_a_killed_writer_leaves_its_slot_to_the_next_run_on_its_host(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    hold = (
        "import sys, time; from pathlib import Path; from headstart.cache.writers import "
        "claim_writer; s = claim_writer(Path(sys.argv[1])); print(s.id, flush=True); "
        "time.sleep(60)"
    )
    env = {**os.environ, HOST_ENV: "gamma"}
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(cache)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "gamma-0"
        second = subprocess.run(
            [sys.executable, "-c", hold.replace("time.sleep(60)", "pass"), str(cache)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.stdout.strip() == "gamma-1"  # a live process holds gamma-0
    finally:
        holder.kill()
        holder.wait()
    third = subprocess.run(
        [sys.executable, "-c", hold.replace("time.sleep(60)", "pass"), str(cache)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert third.stdout.strip() == "gamma-0"
    assert writer_of_shard("00000000001700000000-gamma-0-1a2b3c4d.h5") == "gamma-0"
    assert writer_of_shard("00000000001700000000-4242-1a2b3c4d.h5") is None  # older name


# -- several extract processes, as a SLURM array on several hosts -----------------------------

SLOW = ["--model", f"{TINY_MODELS}:slow_features"]
COMMON = [*SMALL_FP32, "--store-dtype", "float32", "--workers", "0", "-q"]


def _image_bytes(seed: int) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def _shard(path: Path, seeds: range, extra: list[tuple[str, bytes]] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    members = list(extra)
    for seed in seeds:
        members += [
            (f"{seed:06d}.jpg", _image_bytes(seed)),
            (f"{seed:06d}.cls", b"%d" % (seed % 3)),
        ]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _sources(tmp_path: Path) -> list[str]:
    folder = tmp_path / "images"
    files = make_folder(folder, {"cat": 14, "dog": 13})
    (folder / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    for number in range(3):
        # The first shard also holds the bytes of a folder image: one cache entry for both.
        extra = [("dup.jpg", files[0].read_bytes()), ("dup.cls", b"1")] if number == 0 else []
        _shard(
            tmp_path / "shards" / f"{number}.tar", range(100 + 8 * number, 108 + 8 * number), extra
        )
    return [str(folder), str(tmp_path / "shards" / "{0..2}.tar")]


def _writer(sources: list[str], cache: Path, host: str, part: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "headstart", "extract", *sources, *SLOW, *COMMON]
    # An image a batch and a shard each: a part takes seconds (slow_features sleeps a batch),
    # publishes often, and compacts its own shards once it has sixteen.
    command += ["--batch-size", "1", "--shard-size", "1", "--part", part, "--cache", str(cache)]
    env = {**os.environ, HOST_ENV: host}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _own_shards(cache: Path, writer: str) -> int:
    return sum(writer_of_shard(p.name) == writer for p in published_shards(cache))


def _vectors(cache: Path) -> dict[bytes, np.ndarray]:
    out = {}
    for chunk in EmbeddingCache(cache).open().iter_chunks():
        out.update(zip(chunk.keys.tolist(), chunk.embeddings, strict=True))
    return out


def _records(cache: Path, sources: list[str]) -> dict[str, object]:
    """What readers get from the catalogs: labelled rows, stat index, tar samples, failures."""
    with EmbeddingCache(cache).catalog() as catalog:
        return {
            "labelled": sorted(tuple(r) for rows in iter_labelled(sources, catalog) for r in rows),
            "files": sorted(tuple(r) for block in catalog.iter_files() for r in block),
            "samples": sorted(tuple(r) for block in catalog.iter_samples() for r in block),
            "failures": sorted((f.path, f.reason) for f in catalog.iter_failures()),
            "counts": (catalog.count_files(), catalog.count_samples(), catalog.count_failures()),
        }


def _check_consistent_subset(cache: Path, sources: list[str], labelled: set, vectors: dict) -> int:
    """While writers run: every row a reader sees is a row of the clean run, with its label,
    and every vector the store serves is the clean run's. Returns how many rows it saw."""
    if not EmbeddingCache(cache).fingerprints():
        return 0
    with EmbeddingCache(cache).catalog() as catalog:
        rows = [tuple(r) for block in iter_labelled(sources, catalog) for r in block]
    assert set(rows) <= labelled
    store = EmbeddingCache(cache).open()
    keys = np.array(sorted({r[1] for r in rows}), dtype="S64")
    held = keys[store.contains(keys)] if len(keys) else keys
    for key, vector in zip(held.tolist(), store.get(held), strict=True):
        np.testing.assert_allclose(vector, vectors[key], rtol=1e-5, atol=1e-6)
    info = CliRunner().invoke(main, ["info", str(cache)])
    assert info.exit_code == 0, info.output
    return len(rows)


def test_writers_on_several_hosts_killed_and_rerun_equal_one_clean_run(tmp_path: Path) -> None:
    sources = _sources(tmp_path)
    clean, shared = tmp_path / "clean", tmp_path / "shared"
    reference = CliRunner().invoke(
        main,
        [
            "extract",
            *sources,
            "--model",
            f"{TINY_MODELS}:tiny_features",
            *COMMON,
            "--cache",
            str(clean),
        ],
    )
    assert reference.exit_code == EXIT_SOME_FAILED, reference.output  # the broken file
    expected, expected_vectors = _records(clean, sources), _vectors(clean)
    assert len(expected["labelled"]) == 27 + 25 and len(expected_vectors) == 27 + 24
    assert [path for path, _ in expected["failures"]] == [sources[0] + "/dog/broken.jpg"]

    writers = {part: _writer(sources, shared, f"host{part}", f"{part}/3") for part in (1, 2, 3)}
    killed: set[int] = set()
    expected_rows = set(expected["labelled"])
    deadline = time.monotonic() + 240
    while killed != {1, 3}:
        for part in {1, 3} - killed:
            assert writers[part].poll() is None, writers[part].communicate()
            if _own_shards(shared, f"host{part}-0") >= 2:
                os.kill(writers[part].pid, signal.SIGKILL)
                killed.add(part)
        _check_consistent_subset(shared, sources, expected_rows, expected_vectors)  # writers run
        assert time.monotonic() < deadline, "the writers published nothing"
    for part in (1, 3):
        assert writers[part].wait() == -signal.SIGKILL
    out, err = writers[2].communicate(timeout=240)
    assert writers[2].returncode in (0, EXIT_SOME_FAILED), err
    partial = _vectors(shared)
    assert 0 < len(partial) < len(expected_vectors)
    # Killed writers' catalogs (perhaps with a transaction cut short) read as what they committed.
    assert _check_consistent_subset(shared, sources, expected_rows, expected_vectors) > 0

    # The killed parts run again: part 1 on its own host, part 3 moved to another one.
    for host, part in (("host1", "1/3"), ("host9", "3/3")):
        rerun = _writer(sources, shared, host, part)
        out, err = rerun.communicate(timeout=240)
        assert rerun.returncode in (0, EXIT_SOME_FAILED), err

    resumed = _vectors(shared)
    assert resumed.keys() == expected_vectors.keys()
    for key, vector in expected_vectors.items():
        np.testing.assert_allclose(resumed[key], vector, rtol=1e-5, atol=1e-6)
    got = _records(shared, sources)
    for name in ("labelled", "files", "samples", "failures", "counts"):
        assert got[name] == expected[name], name
    whole = _writer(sources, shared, "host2", "1/1")
    out, err = whole.communicate(timeout=240)
    assert "embedded 0 " in out + err or "embedded 0 ·" in out + err, out + err

    ids = {w.id for w in list_writers(shared)}
    assert {"host1-0", "host2-0", "host3-0", "host9-0"} <= ids
    assert {writer_of_shard(p.name) for p in published_shards(shared)} <= ids
    info = CliRunner().invoke(main, ["info", str(shared)])
    assert f"writers: {len(ids)}" in info.output and "host3-0" in info.output
    failures = CliRunner().invoke(main, ["info", str(shared), "--failures"])
    assert failures.output.strip().splitlines()[-1].startswith(sources[0] + "/dog/broken.jpg\t")
    verify = CliRunner().invoke(main, ["cache", "verify", str(shared)])
    assert verify.exit_code == 0, verify.output

    # With the job done, `cache compact` merges every writer's shards, under a writer of its own.
    compacted = CliRunner().invoke(main, ["cache", "compact", str(shared)])
    assert compacted.exit_code == 0, compacted.output
    (compactor,) = [w for w in list_writers(shared) if w.id not in ids]
    assert compactor.finished_unix is not None
    assert {writer_of_shard(p.name) for p in published_shards(shared)} == {compactor.id}
    merged = _vectors(shared)
    assert merged.keys() == expected_vectors.keys()
    for key, vector in expected_vectors.items():
        np.testing.assert_allclose(merged[key], vector, rtol=1e-5, atol=1e-6)


def test_a_reader_reads_a_catalog_from_before_tar_shards_without_changing_it(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with sqlite3.connect(cache / "catalog.sqlite") as db:  # the schema before tar shards
        db.executescript(
            "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER "
            "NOT NULL, key TEXT NOT NULL, label TEXT, seen_unix REAL NOT NULL);"
            "CREATE TABLE failures (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns "
            "INTEGER NOT NULL, reason TEXT NOT NULL, label TEXT, seen_unix REAL NOT NULL);"
            "INSERT INTO files VALUES ('/a.jpg', 1, 2, 'k', 'cat', 0);"
        )
    db.close()
    before = (cache / "catalog.sqlite").read_bytes()
    with EmbeddingCache(cache).catalog() as reader:
        assert reader.lookup(["/a.jpg"])["/a.jpg"].label == "cat"
        assert reader.lookup_shard("/s.tar") is None and list(reader.iter_samples()) == []
        assert reader.count_files() == 1 and reader.count_samples() == 0
    assert (cache / "catalog.sqlite").read_bytes() == before
    assert not (cache / "writers").exists()


_CUT_SHORT = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=1")  # spill pages to the file before the commit
db.execute("BEGIN")
for n in range(5000):
    db.execute("INSERT INTO files VALUES (?, 1, 1, 'k', NULL, 0)", (f"/late/{n:06d}.jpg",))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_in_a_transaction_reads_as_what_it_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    with _catalog_as(cache, "alpha", monkeypatch) as writer:
        writer.record([FileRecord("/kept.jpg", 1, 1, "k-kept")])
        own = writer.path
    subprocess.run([sys.executable, "-c", _CUT_SHORT, str(own)], check=False, timeout=60)
    assert own.with_name("catalog.sqlite-journal").exists()  # the transaction's hot journal

    with EmbeddingCache(cache).catalog() as reader:  # another host's reader, say
        assert [r.path for block in reader.iter_files() for r in block] == ["/kept.jpg"]
    assert not own.with_name("catalog.sqlite-journal").exists()
    verify = CliRunner().invoke(main, ["cache", "verify", str(cache)])
    assert verify.exit_code == 0, verify.output
