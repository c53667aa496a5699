from pathlib import Path

import pytest
from helpers import write_image

from headstart.errors import HeadstartError
from headstart.extract.sources import ImageItem, iter_images


def test_folder_labels_come_from_immediate_subfolders(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "a.jpg", 0)
    write_image(tmp_path / "cat" / "nested" / "b.png", 1, fmt="PNG")
    write_image(tmp_path / "dog" / "c.JPEG", 2)
    write_image(tmp_path / "loose.jpg", 3)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    write_image(tmp_path / ".hidden" / "d.jpg", 4)

    items = list(iter_images([str(tmp_path)]))

    assert [(Path(i.path).relative_to(tmp_path).as_posix(), i.label) for i in items] == [
        ("cat/a.jpg", "cat"),
        ("cat/nested/b.png", "cat"),
        ("dog/c.JPEG", "dog"),
        ("loose.jpg", None),
    ]
    assert all(Path(i.path).is_absolute() for i in items)


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.jpg", 0)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\n# a comment\nimgs/a.jpg,cat\n\n/elsewhere/b.jpg\n")

    items = list(iter_images([str(manifest)]))

    assert items == [
        ImageItem(str(tmp_path / "imgs" / "a.jpg"), "cat"),
        ImageItem("/elsewhere/b.jpg", None),
    ]


def test_single_files_and_several_sources(tmp_path: Path) -> None:
    one = write_image(tmp_path / "one.jpg", 0)
    write_image(tmp_path / "dir" / "x" / "two.jpg", 1)
    items = list(iter_images([str(one), str(tmp_path / "dir")]))
    assert [(Path(i.path).name, i.label) for i in items] == [("one.jpg", None), ("two.jpg", "x")]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing", "source not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no images in"),
        (lambda p: (p / "bad.csv").write_text("a.jpg,cat,extra\n") and p / "bad.csv", "expected"),
    ],
)
def test_bad_sources_say_what_is_wrong(tmp_path: Path, setup, message: str) -> None:
    source = setup(tmp_path)
    with pytest.raises(HeadstartError, match=message):
        list(iter_images([str(source)]))
