"""No entry of a file tree stops a run: each one is embedded, recorded in the failure ledger, or
counted as skipped at listing, with a one-line reason; names that are not UTF-8 round-trip."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST_ARGS, make_folder, write_image
from hostile import (
    LATIN1_FILE,
    LATIN1_FOLDER,
    drop_root_file_access,
    fs,
    make_unix_socket,
    remove_deep_tree,
    summary_counts,
    write_image_bytes,
    write_image_deep,
)

from headstart.cache import EmbeddingCache
from headstart.cli import EXIT_SOME_FAILED, main
from headstart.extract import ExtractOptions, PreprocessOverrides, extract
from headstart.extract.files import UnreadableFile, read_file

FAST_OPTIONS = ExtractOptions(
    "resnet18",
    "none",
    preprocess=PreprocessOverrides(resize_size=40, crop_size=32),
    precision="fp32",
    store_dtype="float32",
    workers=0,
)


def run(*args: object):
    return CliRunner().invoke(main, [os.fsdecode(a) for a in args], catch_exceptions=False)


def test_links_fifos_devices_odd_names_and_deep_trees_never_stop_a_run(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_folder(root, {"cat": 1, "dog": 1})
    cat = root / "cat"
    os.symlink("self.jpg", cat / "self.jpg")
    os.symlink("pong.jpg", cat / "ping.jpg")
    os.symlink("ping.jpg", cat / "pong.jpg")
    os.symlink("missing.jpg", cat / "dangling.jpg")
    os.mkfifo(cat / "fifo.jpg")
    sock = make_unix_socket(cat / "socket.jpg")
    os.symlink("/dev/null", cat / "null.jpg")
    write_image(root / "dog" / "folder.jpg" / "inside.jpg", 3)  # a folder named like an image
    write_image_bytes(fs(root, LATIN1_FOLDER, LATIN1_FILE), 4)
    (Path(os.fsdecode(fs(root, LATIN1_FOLDER, b"not an image \xe9.jpg")))).write_text("text")
    (root / "deep").mkdir()
    write_image_deep(root / "deep", 1100, b"d", 5)  # deeper than Python's recursion limit
    (root / "long").mkdir()
    write_image_deep(root / "long", 25, b"n" * 200, 6)  # longer than PATH_MAX (4096)
    args = ("extract", root, *FAST_ARGS, "--cache", tmp_path / "cache", "-q")

    try:
        first = run(*args)
        again = run(*args)
    finally:
        sock.close()
        remove_deep_tree(root / "deep", 1100, b"d")

    assert first.exit_code == EXIT_SOME_FAILED, first.output
    assert "Traceback" not in first.output
    assert summary_counts(first.output) == {
        "listed": 13,
        "embedded": 5,
        "from cache": 0,
        "failed": 8,
        "skipped at listing": 1,
    }
    assert "skipped at listing" in first.output and "File name too long" in first.output
    with EmbeddingCache(tmp_path / "cache").catalog() as catalog:
        ledger = {os.fsencode(Path(f.path).name): f.reason for f in catalog.iter_failures()}
        indexed = {Path(r.path).name for chunk in catalog.iter_files() for r in chunk}
    loop = "cannot read file: Too many levels of symbolic links"
    assert ledger == {
        b"self.jpg": loop,
        b"ping.jpg": loop,
        b"pong.jpg": loop,
        b"dangling.jpg": "cannot read file: No such file or directory",
        b"fifo.jpg": "not a regular file: a FIFO",
        b"socket.jpg": "not a regular file: a socket",
        b"null.jpg": "not a regular file: a character device",
        b"not an image \xe9.jpg": "not an image Pillow can read (unknown or damaged header)",
    }
    assert indexed == {
        "cat_000.jpg",
        "dog_000.jpg",
        "inside.jpg",
        os.fsdecode(LATIN1_FILE),
        "bottom.jpg",
    }

    assert again.exit_code == EXIT_SOME_FAILED and "Traceback" not in again.output
    assert (
        summary_counts(again.output)["embedded"] == 0
        and summary_counts(again.output)["from cache"] == 5
    )


def test_unreadable_files_and_folders_are_recorded(tmp_path: Path) -> None:
    """Runs as the current user; as root, without the capabilities that bypass permissions."""
    root = tmp_path / "tree"
    make_folder(root, {"open": 1, "locked": 1})
    secret = write_image(root / "open" / "secret.jpg", 9)
    secret.chmod(0)
    (root / "locked").chmod(0)
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "headstart", "extract", str(root), *FAST_ARGS]
    try:
        done = subprocess.run(
            [*command, "--cache", str(cache), "-q", "-j", "0"],
            capture_output=True,
            text=True,
            timeout=240,
            preexec_fn=drop_root_file_access if os.geteuid() == 0 else None,
        )
    finally:
        (root / "locked").chmod(0o755)
        secret.chmod(0o644)
    assert done.returncode == EXIT_SOME_FAILED, done.stderr
    assert "Traceback" not in done.stderr
    assert summary_counts(done.stdout) == {
        "listed": 2,
        "embedded": 1,
        "from cache": 0,
        "failed": 1,
        "skipped at listing": 1,
    }
    assert f"skipped at listing: {root / 'locked'}: cannot list folder: Permission denied" in (
        done.stderr
    )
    with EmbeddingCache(cache).catalog() as catalog:
        assert [(f.path, f.reason) for f in catalog.iter_failures()] == [
            (str(secret), "cannot read file: Permission denied")
        ]


def test_a_file_changed_after_listing_is_stored_under_the_bytes_embedded(
    tmp_path: Path, monkeypatch
) -> None:
    from headstart.extract import runner

    make_folder(tmp_path / "tree", {"a": 3})
    replaced, vanished, shrunk = sorted((tmp_path / "tree" / "a").glob("*.jpg"))
    plan = runner.plan_work

    def plan_then_change_files(*args, **kwargs):
        counts = plan(*args, **kwargs)
        write_image(replaced, 42, size=(64, 64))  # other contents, other size
        vanished.unlink()
        shrunk.write_bytes(shrunk.read_bytes()[:100])
        return counts

    monkeypatch.setattr(runner, "plan_work", plan_then_change_files)
    summary = extract([str(tmp_path / "tree")], FAST_OPTIONS, tmp_path / "cache")
    monkeypatch.undo()

    assert (summary.listed, summary.embedded, summary.failed) == (3, 1, 2)
    cache = EmbeddingCache(tmp_path / "cache")
    with cache.catalog() as catalog:
        record = catalog.lookup([str(replaced)])[str(replaced)]
        reasons = {Path(f.path).name: f.reason for f in catalog.iter_failures()}
    data = replaced.read_bytes()
    assert record.key == hashlib.sha256(data).hexdigest()
    assert (record.size, record.mtime_ns) == (len(data), replaced.stat().st_mtime_ns)
    assert reasons[vanished.name] == "cannot read file: No such file or directory"
    assert "truncated" in reasons[shrunk.name] or "cannot" in reasons[shrunk.name]

    # The stored vector is the one of the new contents, as a clean run over them gives.
    (tmp_path / "clean").mkdir()
    shutil.copy(replaced, tmp_path / "clean" / "only.jpg")
    clean = extract([str(tmp_path / "clean")], FAST_OPTIONS, tmp_path / "clean-cache")
    expected = EmbeddingCache(tmp_path / "clean-cache").open(clean.fingerprint).get([record.key])
    np.testing.assert_array_equal(cache.open(summary.fingerprint).get([record.key]), expected)

    rerun = extract([str(tmp_path / "tree")], FAST_OPTIONS, tmp_path / "cache")
    assert (rerun.embedded, rerun.from_cache) == (0, 1)


def test_read_file_rereads_a_file_that_changes_while_read(tmp_path: Path, monkeypatch) -> None:
    from headstart.extract import files

    path = tmp_path / "growing.jpg"
    path.write_bytes(b"first part")
    real_fstat = os.fstat
    calls = [0]

    def fstat_while_appending(fd: int):
        calls[0] += 1
        if calls[0] == 2:  # after the first read: another program appends
            with open(path, "ab") as f:
                f.write(b", and more")
        return real_fstat(fd)

    monkeypatch.setattr(files.os, "fstat", fstat_while_appending)
    data, st = read_file(str(path))
    assert data == b"first part, and more" and st.st_size == len(data)

    monkeypatch.setattr(files, "_signature", lambda st: calls.append(0) or len(calls))
    with pytest.raises(UnreadableFile, match="changed while it was read"):
        read_file(str(path))


def test_read_file_refuses_what_is_no_regular_file_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.jpg")  # nobody writes: a blocking open would wait forever
    with pytest.raises(UnreadableFile, match="a FIFO"):
        read_file(str(tmp_path / "fifo.jpg"))
    with pytest.raises(UnreadableFile, match="a folder"):
        read_file(str(tmp_path))
    with pytest.raises(UnreadableFile, match="character device"):
        read_file("/dev/zero")


def test_names_that_are_not_utf8_round_trip_everywhere(tmp_path: Path) -> None:
    """Latin-1 folder (a label) and file names: catalog, ledger, info --failures, export's CSV
    and Parquet, a head's classes, predict and knn output keep the exact bytes."""
    root = tmp_path / "tree"
    make_folder(root, {"plain": 4})
    latin = [
        write_image_bytes(fs(root, LATIN1_FOLDER, b"%d-\xe9t\xe9.jpg" % i), 50 + i)
        for i in range(4)
    ]
    broken = fs(root, LATIN1_FOLDER, b"cass\xe9.jpg")
    Path(os.fsdecode(broken)).write_bytes(b"")
    cache = tmp_path / "cache"
    extracted = run("extract", root, *FAST_ARGS, "--cache", cache, "-q")
    assert extracted.exit_code == EXIT_SOME_FAILED, extracted.output
    assert summary_counts(extracted.output)["embedded"] == 8
    assert b"cass\\xe9.jpg: empty file" in extracted.stderr_bytes  # escaped where a person reads

    failures = run("info", cache, "--failures")
    assert failures.stdout_bytes.splitlines()[-1] == broken + b"\tempty file (0 bytes)"

    assert run("export", cache, "--out", tmp_path / "emb.npy").exit_code == 0
    rows = {
        line.split(b",")[1]: line.split(b",")[2]
        for line in (tmp_path / "emb.csv").read_bytes().splitlines()[1:]
    }
    assert all(rows[path] == LATIN1_FOLDER for path in latin)
    assert run("export", cache, "--out", tmp_path / "emb.parquet").exit_code == 0
    import pyarrow.parquet as pq

    parquet = pq.read_table(tmp_path / "emb.parquet").to_pydict()
    assert set(latin) <= set(parquet["path_bytes"])
    assert "caf\\xe9" in parquet["label"] and all(
        os.fsencode(p) == b
        for p, b in zip(parquet["path"], parquet["path_bytes"], strict=True)
        if "\\x" not in p
    )

    head = tmp_path / "head"
    trained = run("train", root, *FAST_ARGS, "--cache", cache, "--head", "ncm", "-o", head, "-q")
    assert trained.exit_code == 0, trained.output
    predicted = run("predict", head, latin[0], "--cache", cache, "--format", "jsonl", "-q")
    assert predicted.exit_code == 0, predicted.output
    answer = json.loads(predicted.stdout_bytes.splitlines()[0])
    assert os.fsencode(answer["path"]) == latin[0]
    assert os.fsencode(answer["label"]) == LATIN1_FOLDER
    as_table = run("predict", head, latin[0], "--cache", cache, "-q")
    assert as_table.stdout_bytes.startswith(latin[0] + b"\t" + LATIN1_FOLDER + b" ")

    index = tmp_path / "index"
    built = run("index", "build", root, *FAST_ARGS, "--cache", cache, "-o", index, "-q")
    assert built.exit_code == 0, built.output
    found = run("knn", index, latin[1], "-k", "1", "--cache", cache, "-q")
    assert found.exit_code == 0, found.output
    assert found.stdout_bytes.splitlines()[1].endswith(latin[1])

    # JSON cannot carry the bytes: the service shows them escaped, as a terminal does.
    from fastapi.testclient import TestClient

    from headstart.serve.app import create_app
    from headstart.serve.settings import ServeSettings

    settings = ServeSettings(
        head_dir=str(head), index_dir=str(index), device="cpu", expose_paths=True
    )
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        assert "caf\\xe9" in client.get("/v1/info").json()["classes"]
        image = Path(os.fsdecode(latin[1])).read_bytes()
        classified = client.post("/v1/classify", files=[("files", ("x.jpg", image))])
        assert classified.json()["results"][0]["label"] == "caf\\xe9"
        nearest = client.post("/v1/neighbors", files=[("file", ("x.jpg", image))]).json()
        assert nearest["neighbors"][0]["label"] == "caf\\xe9"
        assert nearest["neighbors"][0]["path"].endswith("1-\\xe9t\\xe9.jpg")


def test_manifest_lines_naming_folders_missing_files_and_non_images(tmp_path: Path) -> None:
    good = write_image(tmp_path / "photos" / "good.jpg", 1)
    (tmp_path / "photos" / "notes.jpg").write_text("not an image")
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(
        b"\xef\xbb\xbfpath,label\r\n"
        b"photos/good.jpg,a\r\nphotos,a\r\nphotos/missing.jpg,b\r\nphotos/notes.jpg,b\r\n"
    )
    result = run("extract", manifest, *FAST_ARGS, "--cache", tmp_path / "cache", "-q")
    assert result.exit_code == EXIT_SOME_FAILED and "Traceback" not in result.output
    assert summary_counts(result.output) == {
        "listed": 4,
        "embedded": 1,
        "from cache": 0,
        "failed": 3,
    }
    with EmbeddingCache(tmp_path / "cache").catalog() as catalog:
        reasons = {Path(f.path).name: f.reason for f in catalog.iter_failures()}
        assert catalog.lookup([str(good)])[str(good)].label == "a"
    assert reasons == {
        "photos": "not a regular file: a folder",
        "missing.jpg": "cannot read file: No such file or directory",
        "notes.jpg": "not an image Pillow can read (unknown or damaged header)",
    }
