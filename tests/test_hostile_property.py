"""Property: over random hostile trees (good images, damaged files, links, loops, FIFOs, odd
names, duplicates), every listed file is accounted for, the run ends in 0 or 3 without a
traceback, a rerun embeds nothing, and each good image gets the vector a clean tree gives it."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_MODELS, write_image
from hostile import summary_counts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headstart.cache import EmbeddingCache
from headstart.cli import EXIT_SOME_FAILED, main

GOOD_IMAGES = 4
# The tiny CNN: a model build costs milliseconds, and every example runs extract twice.
ARGS = [
    *("--model", f"{TINY_MODELS}:tiny_features", "--weights", "none"),
    *("--resize", "32", "--crop", "32", "--precision", "fp32", "--store-dtype", "float32"),
    *("-j", "0", "-q"),
]
FOLDERS = [b"", b"cat", b"caf\xe9", b"a b/c", b"x.jpg"]
STEMS = [b"img", b"caf\xe9", b"new\nline", b"-dash", b"\xe6\x97\xa5\xe6\x9c\xac", b"UP", b" sp "]
EXTENSIONS = [b".jpg", b".JPG", b".png", b".jpeg"]
KINDS = [
    "good",
    "duplicate",
    "truncated",
    "empty",
    "text",
    "link-to-good",
    "self-link",
    "link-pair",
    "dangling-link",
    "fifo",
    "folder-named-like-an-image",
]
entry = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, GOOD_IMAGES - 1),
    st.sampled_from(FOLDERS),
    st.sampled_from(STEMS),
    st.sampled_from(EXTENSIONS),
)


class Pool(NamedTuple):
    """The good images' bytes, and the vectors a clean tree of only them gets, by key."""

    images: list[bytes]
    vectors: dict[bytes, np.ndarray]

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Pool({len(self.images)} images)"


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Pool:
    root = tmp_path_factory.mktemp("clean")
    images = [write_image(root / "clean" / f"{i}.jpg", 700 + i).read_bytes() for i in range(4)]
    result = _extract(root / "clean", root / "cache")
    assert result.exit_code == 0, result.output
    store = EmbeddingCache(root / "cache").open()
    keys = [hashlib.sha256(data).hexdigest() for data in images]
    return Pool(images, dict(zip([k.encode() for k in keys], store.get(keys), strict=True)))


def _extract(tree: Path, cache: Path):
    return CliRunner().invoke(main, ["extract", str(tree), *ARGS, "--cache", str(cache)])


def _build(root: bytes, entries: list[tuple], images: list[bytes]) -> set[bytes]:
    """Lay the entries out below ``root``; returns the keys of the good images placed."""
    good: set[bytes] = set()
    for number, (kind, which, folder, stem, extension) in enumerate(entries):
        directory = os.path.join(root, folder) if folder else root
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, b"%s%d%s" % (stem, number, extension))
        data = images[which]
        if kind in ("good", "duplicate"):
            Path(os.fsdecode(path)).write_bytes(data)
            good.add(hashlib.sha256(data).hexdigest().encode())
        elif kind == "truncated":
            Path(os.fsdecode(path)).write_bytes(data[: len(data) // 3])
        elif kind == "empty":
            Path(os.fsdecode(path)).write_bytes(b"")
        elif kind == "text":
            Path(os.fsdecode(path)).write_bytes(b"not an image\n" * 5)
        elif kind == "link-to-good":
            target = os.path.join(root, b"target%d.bin" % number)  # not listed itself
            Path(os.fsdecode(target)).write_bytes(data)
            os.symlink(target, path)
            good.add(hashlib.sha256(data).hexdigest().encode())
        elif kind == "self-link":
            os.symlink(path, path)
        elif kind == "link-pair":
            other = os.path.join(directory, b"pair%d.jpg" % number)
            os.symlink(other, path)
            os.symlink(path, other)
        elif kind == "dangling-link":
            os.symlink(path + b".gone", path)
        elif kind == "fifo":
            os.mkfifo(path)
        else:  # a folder named like an image, holding a good one
            os.makedirs(path, exist_ok=True)
            Path(os.fsdecode(os.path.join(path, b"inside.jpg"))).write_bytes(data)
            good.add(hashlib.sha256(data).hexdigest().encode())
    return good


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entries=st.lists(entry, min_size=1, max_size=10))
def test_random_hostile_trees_keep_the_invariants(pool, entries) -> None:
    images, reference = pool
    scratch = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        tree = scratch / "tree"
        tree.mkdir()
        good = _build(os.fsencode(tree), entries, images)
        first = _extract(tree, scratch / "cache")
        assert first.exception is None or isinstance(first.exception, SystemExit), first.output
        assert first.exit_code in (0, EXIT_SOME_FAILED), first.output
        assert "Traceback" not in first.output
        counts = summary_counts(first.output)
        answered = counts["embedded"] + counts["from cache"] + counts["failed"]
        assert counts["listed"] == answered, first.output
        assert (first.exit_code == EXIT_SOME_FAILED) == bool(counts["failed"]), first.output

        if good:
            # Equal up to float rounding: oneDNN's kernels sum in an order that depends on
            # how many images share a batch.
            store = EmbeddingCache(scratch / "cache").open()
            for key in good:
                vector = store.get([key.decode()])[0]
                np.testing.assert_allclose(vector, reference[key], rtol=1e-4, atol=1e-5)

        again = _extract(tree, scratch / "cache")
        assert again.exit_code == first.exit_code, again.output
        assert summary_counts(again.output)["embedded"] == 0, again.output
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
