import os
from pathlib import Path

import pytest
from helpers import write_image

from headstart.errors import HeadstartError
from headstart.extract.sources import ImageItem, ListingSkips, iter_images


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


def test_manifest_with_bom_crlf_and_latin1_bytes(tmp_path: Path) -> None:
    """A manifest saved by Windows tools (BOM, CRLF) naming Latin-1 files: the bytes that are
    not UTF-8 name the very files they name on disk."""
    name = b"cr\xe8me.jpg"
    write_image(Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name))), 0)
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,label\r\n" + name + b",d\xe9j\xe0\r\nplain.jpg\r\n")

    items = list(iter_images([str(manifest)]))

    assert [(os.fsencode(i.path), i.label and os.fsencode(i.label)) for i in items] == [
        (os.path.join(os.fsencode(tmp_path), name), b"d\xe9j\xe0"),
        (os.fsencode(tmp_path / "plain.jpg"), None),
    ]
    assert os.path.isfile(items[0].path)


@pytest.mark.parametrize(
    "content",
    [
        "a.jpg\n".encode("utf-16"),  # UTF-16: NUL bytes on every line
        b"a.jpg\nb\x00.jpg\n",
    ],
)
def test_manifest_that_is_not_text_fails_in_one_line_naming_it(tmp_path: Path, content) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(content)
    with pytest.raises(HeadstartError, match=r"list\.txt:\d+: .*NUL.*saved as UTF-8"):
        list(iter_images([str(manifest)]))


def test_unreadable_folders_are_counted_not_fatal(tmp_path: Path, monkeypatch) -> None:
    write_image(tmp_path / "a" / "x.jpg", 0)
    write_image(tmp_path / "b" / "y.jpg", 1)
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("/b"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped = ListingSkips()
    items = list(iter_images([str(tmp_path)], skipped))
    assert [Path(i.path).name for i in items] == ["x.jpg"]
    assert skipped.count == 1
    assert skipped.examples == [(str(tmp_path / "b"), "cannot list folder: Permission denied")]

    monkeypatch.setattr(os, "scandir", lambda path: scandir(str(tmp_path / "b")))
    with pytest.raises(HeadstartError, match=r"1 folders could not be read .*Permission denied"):
        list(iter_images([str(tmp_path)], ListingSkips()))
