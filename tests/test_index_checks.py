"""An index's files are checked cheaply when it loads (size, modification time and sampled
blocks) and fully on request; an altered file is refused in one line, not served."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from headstart.cache import Fingerprint
from headstart.errors import HeadstartError
from headstart.search.build import build_index
from headstart.search.checksum import SAMPLE_BLOCK, _sample_offsets
from headstart.search.spec import IndexSpec
from headstart.search.store import load_index, save_index

FINGERPRINT = Fingerprint({"model": "test"}, {"model": "resnet18", "weights": "none"})


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A flat index of 8,000 x 64 (2 MB, larger than the 16 sampled blocks' 1 MB)."""
    directory = tmp_path_factory.mktemp("checks") / "index"
    X = np.random.default_rng(0).normal(size=(8000, 64)).astype(np.float32)
    index, spec, recall = build_index(X, IndexSpec("flat"))
    save_index(directory, index, spec, recall, fingerprint=FINGERPRINT,
               paths=[f"/img/{i}.jpg" for i in range(8000)], labels=[None] * 8000,
               keys=[f"{i:064x}" for i in range(8000)])  # fmt: skip
    return directory


def _copy(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(saved, copy)  # copy2: times kept, as `cp -p` and rsync -t keep them
    return copy


def _flip(path: Path, offset: int) -> None:
    """Change one byte in place, then put the modification time back, as a writer hiding its
    change (or a bit flip on disk) would."""
    status = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_a_byte_changed_inside_a_sampled_block_is_refused_at_load(saved, tmp_path) -> None:
    copy = _copy(saved, tmp_path)
    assert load_index(copy).index.ntotal == 8000
    size = (copy / "index.faiss").stat().st_size
    middle = _sample_offsets(size)[8]
    assert SAMPLE_BLOCK < middle < size - SAMPLE_BLOCK  # neither the head nor the tail
    _flip(copy / "index.faiss", middle + 100)
    with pytest.raises(HeadstartError, match="altered or damaged: its content differs") as refused:
        load_index(copy)
    assert "\n" not in str(refused.value)


def test_a_byte_changed_outside_the_samples_is_found_by_verify(saved, tmp_path) -> None:
    copy = _copy(saved, tmp_path)
    size = (copy / "index.faiss").stat().st_size
    offsets = _sample_offsets(size)
    gap = offsets[4] + SAMPLE_BLOCK + 10  # between two sampled blocks
    assert gap < offsets[5]
    _flip(copy / "index.faiss", gap)
    load_index(copy)  # the cheap check cannot see it: that is what verify is for
    with pytest.raises(HeadstartError, match="altered or damaged"):
        load_index(copy, verify=True)
    refused = run_cli("index", "verify", copy)
    assert refused.exit_code == 1 and "altered or damaged" in refused.output
    assert "Traceback" not in refused.output


def test_a_changed_modification_time_is_refused_until_verified(saved, tmp_path) -> None:
    copy = _copy(saved, tmp_path)
    os.utime(copy / "items.sqlite", ns=(0, 10**18))
    with pytest.raises(HeadstartError, match="modification time differs") as refused:
        load_index(copy)
    assert "headstart index verify" in str(refused.value)
    knn = run_cli("knn", copy, "--duplicates", "0.99")
    assert knn.exit_code == 1 and "modification time differs" in knn.output
    # Every byte agrees: verify accepts the file and records its new time.
    assert load_index(copy, verify=True).index.ntotal == 8000
    verified = run_cli("index", "verify", copy)
    assert verified.exit_code == 0, verified.output
    assert "items.sqlite" in verified.output
    recorded = json.loads((copy / "index.json").read_text())["files"]["items.sqlite"]
    assert recorded["mtime_ns"] == 10**18
    assert load_index(copy).index.ntotal == 8000


def test_loading_reads_a_bounded_part_of_the_file(saved, tmp_path) -> None:
    # The full digest stays recorded, and the cheap check reads at most 16 blocks.
    document = json.loads((saved / "index.json").read_text())
    stamp = document["files"]["index.faiss"]
    assert stamp["sha256"] == document["index_sha256"] and len(stamp["sha256"]) == 64
    assert len(_sample_offsets(10 * 2**30)) == 16
