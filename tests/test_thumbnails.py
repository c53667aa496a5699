"""Thumbnails kept in an index: what `index build` writes, what loading checks, and opting out."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import COLOURS, FAST_ARGS, make_colour_folder, run_cli
from PIL import Image

from headstart.errors import HeadstartError
from headstart.search.store import load_index
from headstart.search.thumbnails import ThumbnailStore, make_thumbnail, write_thumbnails


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("thumbnails")
    make_colour_folder(root / "images", per_class=3)
    # A file that was readable when embedded and is damaged by the time the index is built
    # cannot be staged through the CLI; write_thumbnails' own test covers that case.
    result = run_cli(
        "index", "build", root / "images", *FAST_ARGS, "--cache", root / "cache",
        "-o", root / "index", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


def test_every_item_has_a_small_thumbnail_of_its_own_image(built: Path) -> None:
    index = load_index(built / "index")
    assert index.thumbnails is not None and len(index.thumbnails) == len(index.items)
    assert json.loads((built / "index" / "index.json").read_text())["thumbnails"]["missing"] == 0
    for row, item in enumerate(next(index.items.blocks())):
        path, label = item.path, item.label
        thumbnail = Image.open(io.BytesIO(index.thumbnails.get(row)))
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 96
        # The colour the item's class is made of, so the row points at the right image.
        mean = np.asarray(thumbnail.convert("RGB"), dtype=float).mean(axis=(0, 1))
        assert np.abs(mean - COLOURS[label]).max() < 40, (path, mean)


def test_a_large_photo_shrinks_to_the_side_keeping_its_shape_and_orientation(tmp_path) -> None:
    photo = Image.new("RGB", (640, 320), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    out = io.BytesIO()
    photo.save(out, format="JPEG", exif=exif)
    thumbnail = Image.open(io.BytesIO(make_thumbnail(out.getvalue(), side=96)))
    assert thumbnail.size == (48, 96)  # upright, longer side 96


def test_unreadable_images_get_an_empty_entry_and_are_counted(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(good)
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(b"\xff\xd8\xff not really")
    summary = write_thumbnails(
        tmp_path / "index", [str(good), str(damaged), str(tmp_path / "gone")]
    )
    assert (summary.count, summary.missing) == (3, 2)
    store = ThumbnailStore(tmp_path / "index", 3)
    assert Image.open(io.BytesIO(store.get(0))).size == (30, 20)
    assert store.get(1) is None and store.get(2) is None
    with pytest.raises(IndexError):
        store.get(3)


def test_altered_thumbnails_are_refused_when_the_index_loads(built: Path, tmp_path) -> None:
    copy = tmp_path / "index"
    shutil.copytree(built / "index", copy)  # times kept: the index's own files are intact
    with open(copy / "thumbnails.bin", "ab") as f:
        f.write(b"extra")
    with pytest.raises(HeadstartError, match="thumbnails do not match the index"):
        load_index(copy)


def test_no_thumbnails_keeps_no_image_content(built: Path, tmp_path: Path) -> None:
    result = run_cli(
        "index", "build", built / "images", *FAST_ARGS, "--cache", built / "cache",
        "-o", tmp_path / "index", "--no-thumbnails", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob("index/thumbnails*"))
    assert load_index(tmp_path / "index").thumbnails is None
