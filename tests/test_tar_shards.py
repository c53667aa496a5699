"""webdataset tar shards as sources: read as streams, keyed by content, labelled, resumable."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
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
from helpers import SMALL_FP32, TINY_MODELS, published_shards
from PIL import Image

from headstart.cache import EmbeddingCache
from headstart.cache.catalog import FileCatalog, SampleRecord, ShardRecord
from headstart.cli import EXIT_SOME_FAILED, main
from headstart.extract.labelled import iter_labelled
from headstart.extract.samples import SampleFault, ShardEnd, TarSample, iter_tar_samples
from headstart.extract.shards import expand_braces, list_shards, split_sources
from headstart.search.store import load_index

TINY = ["--model", f"{TINY_MODELS}:tiny_features", *SMALL_FP32, "-q"]


def image_bytes(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(out, fmt)
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def labelled_shard(path: Path, first: int, count: int, fmt: str = "JPEG") -> Path:
    """Samples ``first..first+count-1``: an image, a ``.cls`` (seed mod 3), a ``.txt``."""
    ext = "jpg" if fmt == "JPEG" else "png"
    members = []
    for seed in range(first, first + count):
        key = f"{seed:06d}"
        members += [
            (f"{key}.{ext}", image_bytes(seed, fmt)),
            (f"{key}.cls", str(seed % 3).encode()),
            (f"{key}.txt", f"picture {seed}".encode()),
        ]
    return write_tar(path, members)


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_brace_patterns_expand_as_webdataset_writes_them() -> None:
    assert list(expand_braces("s/{000..002}.tar")) == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert list(expand_braces("{a,b}/{8..10}.tar")) == [
        "a/8.tar",
        "a/9.tar",
        "a/10.tar",
        "b/8.tar",
        "b/9.tar",
        "b/10.tar",
    ]
    assert split_sources(["photos", "x.tar", "s/{0..3}.tar", "m.csv"]) == (
        ["photos", "m.csv"],
        ["x.tar", "s/{0..3}.tar"],
    )


def test_members_group_into_samples_by_key_and_faults_are_yielded(tmp_path: Path) -> None:
    shard = write_tar(
        tmp_path / "s.tar",
        [
            ("d/a.jpg", b"A"),
            ("d/a.cls", b"1"),
            ("d/b.seg.png", b"B"),
            ("d/b.json", b"{}"),
            ("README", b"no extension: not a sample member"),
            ("d/a.jpg", b"again"),  # a second sample with key d/a
        ],
    )
    with open(shard, "rb") as f:
        events = list(iter_tar_samples(f))
    samples = [e for e in events if isinstance(e, TarSample)]
    assert [(s.key, sorted(s.data)) for s in samples] == [
        ("d/a", ["cls", "jpg"]),
        ("d/b", ["json", "seg.png"]),
    ]
    assert samples[1].image() == "seg.png"
    (fault,) = [e for e in events if isinstance(e, SampleFault)]
    assert fault.member == "d/a.jpg" and "duplicate sample key" in fault.reason
    assert events[-1] == ShardEnd(None)


@pytest.mark.parametrize("cut", ["inside-a-member", "between-members"])
def test_a_truncated_tar_yields_what_came_before_and_names_the_damage(
    tmp_path: Path, cut: str
) -> None:
    whole = labelled_shard(tmp_path / "whole.tar", 0, 4).read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        offsets = [m.offset for m in tar.getmembers()]
    # Member 6 is the third sample's image: cut into its data, or just before its header.
    end = offsets[6] + 700 if cut == "inside-a-member" else offsets[6]
    events = list(iter_tar_samples(io.BytesIO(whole[:end])))
    assert [e.key for e in events if isinstance(e, TarSample)] == ["000000", "000001"]
    assert events[-1].damage is not None
    assert ("damaged tar" if cut == "inside-a-member" else "no end-of-archive") in events[-1].damage


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_shards_are_read_and_a_cut_one_is_damaged(tmp_path: Path, compress) -> None:
    whole = compress(labelled_shard(tmp_path / "s.tar", 0, 3).read_bytes())
    events = list(iter_tar_samples(io.BytesIO(whole)))
    assert [e.key for e in events if isinstance(e, TarSample)] == ["000000", "000001", "000002"]
    assert events[-1] == ShardEnd(None)
    cut = list(iter_tar_samples(io.BytesIO(whole[: len(whole) * 2 // 3])))
    assert cut[-1].damage is not None
    assert cut[-1].damage.startswith("damaged tar after"), cut[-1].damage


def test_shards_embed_like_files_with_labels_and_captions(
    tmp_path: Path, forward_count: list[int]
) -> None:
    shards = tmp_path / "shards"
    labelled_shard(shards / "00000.tar", 0, 5)
    labelled_shard(shards / "00001.tar", 5, 4, fmt="PNG")
    cache = tmp_path / "cache"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "same.jpg").write_bytes(image_bytes(2))  # sample 000002's bytes, as a file

    result = run(
        "extract", folder, shards / "{00000..00001}.tar", *TINY, "-j", "0", "--cache", cache
    )
    assert result.exit_code == 0, result.output
    assert "listed 10 · embedded 9 · from cache 1 · failed 0" in result.output
    assert forward_count[0] == 9  # the file and sample 000002 are one cache entry
    assert len(EmbeddingCache(cache).open()) == 9

    with EmbeddingCache(cache).catalog() as catalog:
        rows = [row for block in iter_labelled([str(shards / "*.tar")], catalog) for row in block]
    assert [Path(r.name).name for r in rows[:2]] == ["00000.tar#000000.jpg", "00000.tar#000001.jpg"]
    assert [r.label for r in rows] == [str(seed % 3) for seed in range(9)]
    assert rows[3].caption == "picture 3"
    store = EmbeddingCache(cache).open()
    file_key = store.resolve_keys([str(folder / "same.jpg")])[0]
    assert rows[2].key == file_key
    # Files and samples together, source by source in the order given.
    with EmbeddingCache(cache).catalog() as catalog:
        mixed = [
            row for block in iter_labelled([str(folder), str(shards)], catalog) for row in block
        ]
    assert mixed[0] == (str(folder / "same.jpg"), file_key, None, None)
    assert mixed[1:] == rows

    # The other spellings of the same shards: a glob, a folder of shards, single paths.
    for spelling in ([shards / "*.tar"], [shards], [shards / "00000.tar", shards / "00001.tar"]):
        rerun = run("extract", *spelling, *TINY, "--cache", cache)
        assert "listed 9 · embedded 0 · from cache 9 · failed 0" in rerun.output, rerun.output
    assert forward_count[0] == 9

    assert run("export", cache, "--out", tmp_path / "emb.npy").exit_code == 0
    table = (tmp_path / "emb.csv").read_text().splitlines()
    assert table[0] == "row,path,label,key,caption" and len(table) == 1 + 10
    (line,) = [line for line in table if "00000.tar#000004.jpg" in line]
    assert line.split(",")[2] == "1" and line.endswith(",picture 4")


def test_json_fields_give_labels_and_captions(tmp_path: Path, monkeypatch) -> None:
    members = []
    for seed in range(3):
        record = {"label": ["cat", "dog", "cat"][seed], "caption": f"a pet {seed}", "n": 7}
        members += [
            (f"{seed}.webp", image_bytes(seed, "WEBP")),
            (f"{seed}.json", json.dumps(record).encode()),
        ]
    shard = write_tar(tmp_path / "pets.tar", members)
    cache = tmp_path / "cache"
    args = ("extract", shard, *TINY, "-j", "0", "--cache", cache)
    assert run(*args, "--label-field", "label", "--caption-field", "caption").exit_code == 0
    with EmbeddingCache(cache).catalog() as catalog:
        (rows,) = iter_labelled([str(shard)], catalog)
    assert [(r.label, r.caption) for r in rows] == [
        ("cat", "a pet 0"),
        ("dog", "a pet 1"),
        ("cat", "a pet 2"),
    ]

    # No fields given (as train or index build would run it): the shard stands as it was read.
    plain = run(*args, "--label-field", "label")
    assert "listed 3 · embedded 0 · from cache 3" in plain.output, plain.output
    with EmbeddingCache(cache).catalog() as catalog:
        (rows,) = iter_labelled([str(shard)], catalog)
        assert catalog.lookup_shard(str(shard)).fields == '["label", "caption"]'
    assert [r.caption for r in rows] == ["a pet 0", "a pet 1", "a pet 2"]

    # Other fields: the shard is read again for its labels; nothing is decoded or embedded.
    from headstart.extract import reader

    decoded = []
    original = reader.model_pixels
    monkeypatch.setattr(reader, "model_pixels", lambda *args: decoded.append(1) or original(*args))
    again = run(*args, "--label-field", "n")
    assert "listed 3 · embedded 0 · from cache 3" in again.output, again.output
    assert not decoded
    with EmbeddingCache(cache).catalog() as catalog:
        (rows,) = iter_labelled([str(shard)], catalog)
    assert [(r.label, r.caption) for r in rows] == [("7", None)] * 3


def test_faults_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    good = labelled_shard(tmp_path / "s" / "good.tar", 0, 3)
    members = [
        ("000010.jpg", image_bytes(10)),
        ("000011.jpg", b"this is not a JPEG" * 10),
        ("000012.jpg", image_bytes(12)),
        ("000010.jpg", image_bytes(13)),  # a second sample with key 000010
    ]
    odd = write_tar(tmp_path / "s" / "odd.tar", members)
    whole = labelled_shard(tmp_path / "whole.tar", 20, 4).read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        cut = [m.offset for m in tar.getmembers()][6] + 700  # into the third image
    (tmp_path / "s" / "truncated.tar").write_bytes(whole[:cut])
    cache = tmp_path / "cache"

    result = run("extract", tmp_path / "s" / "*.tar", *TINY, "-j", "0", "--cache", cache)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "listed 10 · embedded 7 · from cache 0 · failed 3" in result.output
    with EmbeddingCache(cache).catalog() as catalog:
        ledger = {f.path: f.reason for f in catalog.iter_failures()}
        truncated = catalog.lookup_shard(str(tmp_path / "s" / "truncated.tar"))
        assert catalog.lookup_shard(str(good)).damage is None
    assert "not an image" in ledger[f"{odd}#000011.jpg"]
    assert "duplicate sample key '000010'" in ledger[f"{odd}#000010.jpg"]
    assert "damaged tar after" in ledger[str(tmp_path / "s" / "truncated.tar")]
    assert truncated.samples == 2 and truncated.damage.startswith("damaged tar")

    rerun = run("extract", tmp_path / "s" / "*.tar", *TINY, "-j", "0", "--cache", cache)
    assert rerun.exit_code == EXIT_SOME_FAILED
    assert "embedded 0 · from cache 7 · failed 3" in rerun.output
    assert "3 in earlier runs" in rerun.output
    retried = run(
        "extract", tmp_path / "s" / "*.tar", *TINY, "-j", "0", "--cache", cache, "--retry-failed"
    )
    assert "listed 10 · embedded 0 · from cache 7 · failed 3" in retried.output, retried.output
    assert "earlier runs" not in retried.output


def test_a_missing_shard_is_one_line_before_any_work(tmp_path: Path) -> None:
    labelled_shard(tmp_path / "00000.tar", 0, 2)
    result = CliRunner().invoke(
        main,
        ["extract", str(tmp_path / "{00000..00001}.tar"), *TINY, "--cache", str(tmp_path / "c")],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "shard not found" in result.output and "00001.tar" in result.output
    assert not list((tmp_path / "c").glob("*/shards/*.h5"))
    nothing = CliRunner().invoke(main, ["extract", str(tmp_path / "none-*.tar"), *TINY])
    assert nothing.exit_code == 1 and "no shards match" in nothing.output


def test_a_read_shard_is_not_opened_again(tmp_path: Path) -> None:
    shard = labelled_shard(tmp_path / "a.tar", 0, 4)
    cache = tmp_path / "cache"
    assert run("extract", shard, *TINY, "-j", "0", "--cache", cache).exit_code == 0
    # Same size and mtime, other bytes: a run that opened it would find no image in it.
    st = shard.stat()
    shard.write_bytes(b"\0" * st.st_size)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    rerun = run("extract", shard, *TINY, "-j", "0", "--cache", cache)
    assert (
        rerun.exit_code == 0 and "listed 4 · embedded 0 · from cache 4 · failed 0" in rerun.output
    )
    # Once the shard changes, it is read again.
    labelled_shard(shard, 10, 2)
    changed = run("extract", shard, *TINY, "-j", "0", "--cache", cache)
    assert "listed 2 · embedded 2 · from cache 0" in changed.output, changed.output
    with EmbeddingCache(cache).catalog() as catalog:
        (rows,) = iter_labelled([str(shard)], catalog)
    assert [r.name.rsplit("#")[1] for r in rows] == ["000010.jpg", "000011.jpg"]


def test_parts_divide_the_shards_and_open_only_their_own(tmp_path: Path) -> None:
    for number in range(5):
        labelled_shard(tmp_path / "s" / f"{number:02d}.tar", 10 * number, 3)
    pattern = tmp_path / "s" / "{00..04}.tar"
    cache = tmp_path / "cache"
    first = run("extract", pattern, *TINY, "--part", "1/2", "-j", "2", "--cache", cache)
    assert first.exit_code == 0 and "part 1/2: 9 of 9 listed" in first.output, first.output
    with EmbeddingCache(cache).catalog() as catalog:
        read = [n for n in range(5) if catalog.lookup_shard(str(tmp_path / "s" / f"{n:02d}.tar"))]
    assert read == [0, 2, 4]
    second = run("extract", pattern, *TINY, "--part", "2/2", "-j", "0", "--cache", cache)
    assert "part 2/2: 6 of 6 listed · embedded 6" in second.output, second.output
    whole = run("extract", pattern, *TINY, "--cache", cache)
    assert "listed 15 · embedded 0 · from cache 15" in whole.output


def test_old_catalogs_gain_the_sample_tables_in_place(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as db:  # the schema before tar shards
        db.executescript(
            "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER "
            "NOT NULL, key TEXT NOT NULL, label TEXT, seen_unix REAL NOT NULL);"
            "CREATE TABLE failures (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns "
            "INTEGER NOT NULL, reason TEXT NOT NULL, label TEXT, seen_unix REAL NOT NULL);"
            "INSERT INTO files VALUES ('/a.jpg', 1, 2, 'k', 'cat', 0);"
        )
    db.close()
    with FileCatalog(path) as catalog:
        assert catalog.lookup(["/a.jpg"])["/a.jpg"].label == "cat"
        sample = SampleRecord("/s.tar", "x", "x.jpg", "k2", "dog", "a dog")
        catalog.record(samples=[sample], shards=[ShardRecord("/s.tar", 5, 6, 1, 0, None, "[]")])
        assert [list(block) for block in catalog.iter_samples()] == [[sample]]
        assert catalog.lookup_shard("/s.tar").samples == 1
        catalog.forget_shard("/s.tar")
        assert catalog.lookup_shard("/s.tar") is None and catalog.count_samples() == 0


def test_listing_shards_keeps_one_record_per_shard(tmp_path: Path) -> None:
    for number in range(3):
        labelled_shard(tmp_path / f"{number}.tar", number, 1)
    refs = list_shards([str(tmp_path / "*.tar"), str(tmp_path / "1.tar")])
    assert [Path(r.path).name for r in refs] == ["0.tar", "1.tar", "2.tar"]


def _headstart(*args: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "headstart", "extract", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return out


def _embeddings_by_key(cache: Path) -> dict[bytes, np.ndarray]:
    out = {}
    for chunk in EmbeddingCache(cache).open().iter_chunks():
        out.update(zip(chunk.keys.tolist(), chunk.embeddings, strict=True))
    return out


def test_sigkill_in_the_middle_of_a_shard_then_the_rerun_embeds_only_what_is_missing(
    tmp_path: Path,
) -> None:
    first = labelled_shard(tmp_path / "s" / "0.tar", 0, 30)
    labelled_shard(tmp_path / "s" / "1.tar", 30, 30)
    pattern = tmp_path / "s" / "{0..1}.tar"
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    common = [*SMALL_FP32, "--store-dtype", "float32", "--workers", "1", "-q"]
    slow = ["--model", f"{TINY_MODELS}:slow_features", *common]

    process = _headstart(
        pattern, *slow, "--batch-size", "4", "--shard-size", "8", "--cache", killed
    )
    deadline = time.monotonic() + 120
    while len(published_shards(killed)) < 2:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no shard was published"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = len(_embeddings_by_key(killed))
    assert 16 <= partial < 30
    with EmbeddingCache(killed).catalog() as catalog:
        assert catalog.lookup_shard(str(first)) is None  # killed before its end

    rerun = _finish(_headstart(pattern, *slow, "--cache", killed))
    assert f"listed 60 · embedded {60 - partial} · from cache {partial} · failed 0" in rerun
    # The same weights, uninterrupted (tiny_features is slow_features without the sleep).
    _finish(
        _headstart(
            pattern, "--model", f"{TINY_MODELS}:tiny_features", *common, "--cache", reference
        )
    )
    resumed, clean = _embeddings_by_key(killed), _embeddings_by_key(reference)
    assert resumed.keys() == clean.keys() and len(clean) == 60
    for key, vector in clean.items():
        np.testing.assert_allclose(resumed[key], vector, rtol=1e-5, atol=1e-6)
    with EmbeddingCache(killed).catalog() as catalog:
        labels = [r.label for rows in iter_labelled([str(pattern)], catalog) for r in rows]
    assert labels == [str(seed % 3) for seed in range(60)]


def test_torchrun_ranks_divide_the_shards_and_rank_0_reports_the_job(tmp_path: Path) -> None:
    for number in range(4):
        labelled_shard(tmp_path / "s" / f"{number}.tar", 10 * number, 3 + number)
    pattern = str(tmp_path / "s" / "{0..3}.tar")
    common = [*SMALL_FP32, "--store-dtype", "float32", "--workers", "0", "-q"]
    model = ["--model", f"{TINY_MODELS}:tiny_features", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, "--nproc-per-node", "2", "-m", "headstart", "extract", pattern, *model]
    ranks = subprocess.run(
        [*command, "--cache", str(tmp_path / "ranks")], capture_output=True, text=True, timeout=300
    )
    assert ranks.returncode == 0, ranks.stderr
    assert ranks.stdout.count("listed 18 · embedded 18 ·") == 1, ranks.stdout  # rank 0 only
    _finish(_headstart(pattern, *model, "--cache", tmp_path / "one"))
    by_ranks, by_one = _embeddings_by_key(tmp_path / "ranks"), _embeddings_by_key(tmp_path / "one")
    assert by_ranks.keys() == by_one.keys() and len(by_one) == 18
    for key, vector in by_one.items():
        np.testing.assert_allclose(by_ranks[key], vector, rtol=1e-5, atol=1e-6)


def test_heads_train_and_evaluate_on_shards_with_their_labels(tmp_path: Path) -> None:
    """Labels recorded from `.cls` reach train and evaluate as folder labels do."""
    cache = tmp_path / "cache"
    for part in range(2):
        labelled_shard(tmp_path / "shards" / f"{part:03d}.tar", part * 12, 12)
    pattern = tmp_path / "shards" / "{000..001}.tar"
    trained = run("train", pattern, *TINY, "--cache", cache, "--head", "ncm", "-o", tmp_path / "h")
    assert trained.exit_code == 0, trained.output
    head = json.loads((tmp_path / "h" / "head.json").read_text())
    assert sorted(head["classes"]) == ["0", "1", "2"]
    evaluated = run("evaluate", tmp_path / "h", pattern, "--cache", cache, "--json", tmp_path / "e")
    assert evaluated.exit_code == 0, evaluated.output
    document = json.loads((tmp_path / "e").read_text())
    assert document["n"] == 24 and document["missing"] == 0


def test_index_build_keeps_labels_and_captions_and_knn_shows_them(tmp_path: Path) -> None:
    """A ``.cls`` may hold a class name as well as an index; either way the label reaches the
    index's items as a folder's label does, and the ``.txt`` caption with it, through
    ``index build`` and ``index add``, to what ``knn`` prints."""

    def shard(name: str, seeds: range) -> Path:
        members = []
        for seed in seeds:
            members += [
                (f"{seed:04d}.jpg", image_bytes(seed)),
                (f"{seed:04d}.cls", ["heron", "otter"][seed % 2].encode() + b"\n"),
                (f"{seed:04d}.txt", f"animal {seed}".encode()),
            ]
        return write_tar(tmp_path / name, members)

    first, second = shard("a.tar", range(6)), shard("b.tar", range(6, 8))
    cache, out = tmp_path / "cache", tmp_path / "idx"
    built = run("index", "build", first, *TINY, "--cache", cache, "-o", out)
    assert built.exit_code == 0 and "indexed 6 vectors" in built.output, built.output
    added = run("index", "add", out, second, "--cache", cache)
    assert added.exit_code == 0, added.output
    items = load_index(out).items
    found = {Path(i.path).name: (i.label, i.caption) for block in items.blocks() for i in block}
    assert found == {
        f"{name}#{seed:04d}.jpg": (["heron", "otter"][seed % 2], f"animal {seed}")
        for name, seeds in (("a.tar", range(6)), ("b.tar", range(6, 8)))
        for seed in seeds
    }
    nearest = run("knn", out, second, "-k", "1", "--cache", cache, "-q")
    assert nearest.exit_code == 0, nearest.output
    (line,) = [line for line in nearest.output.splitlines() if "b.tar#0007.jpg  " in line]
    assert line.split()[2] == "otter" and line.endswith('b.tar#0007.jpg  "animal 7"'), line


def test_the_service_answers_neighbours_with_their_captions(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from headstart.serve.app import ServeSettings, create_app

    shard = labelled_shard(tmp_path / "pets.tar", 0, 6)
    cache, head, out = tmp_path / "cache", tmp_path / "head", tmp_path / "idx"
    trained = run("train", shard, *TINY, "--cache", cache, "--head", "ncm", "-o", head)
    assert trained.exit_code == 0, trained.output
    built = run("index", "build", shard, *TINY, "--cache", cache, "-o", out)
    assert built.exit_code == 0, built.output
    vector = load_index(out).index.reconstruct(4).tolist()
    settings = ServeSettings(head_dir=str(head), index_dir=str(out), device="cpu")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answer = client.post("/v1/neighbors", json={"vector": vector, "k": 1})
    assert answer.status_code == 200, answer.text
    (nearest,) = answer.json()["neighbors"]
    assert (nearest["id"], nearest["label"], nearest["caption"]) == (4, "1", "picture 4")
