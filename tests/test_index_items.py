"""An index's items on disk: read by row, exact for odd file names, and older indexes'
items.csv converted on first load."""

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from headstart.cache import Fingerprint
from headstart.cache.keys import file_key
from headstart.errors import HeadstartError
from headstart.search.build import build_index
from headstart.search.items import ItemTable, write_items
from headstart.search.spec import choose_spec
from headstart.search.store import load_index, save_index

FINGERPRINT = Fingerprint({"model": "test"}, {"model": "resnet18", "weights": "none"})
ODD = "/img/caf\udce9.jpg"  # a Latin-1 name on a UTF-8 system: not valid UTF-8


def _items(n: int):
    """(path, label, key, caption) rows: odd bytes in a path and a caption, some without."""
    return [(ODD if i == 3 else f"/img/{i}.jpg", None if i % 5 == 0 else f"c{i % 3}", f"{i:064x}",
             None if i % 2 else f"a photo {i}" + ("\udce9" if i == 4 else ""))
            for i in range(n)]  # fmt: skip


def _fields(item) -> tuple:
    return item.path, item.label, item.key, item.caption


def test_items_read_back_by_row_exactly_in_any_order(tmp_path: Path) -> None:
    rows = _items(1200)
    assert write_items(tmp_path / "items.sqlite", iter(rows)) == 1200
    table = ItemTable(tmp_path / "items.sqlite")
    assert len(table) == 1200
    wanted = [1100, 3, 0, 3, 777]  # repeats and more than one query's worth are fine
    assert [_fields(i) for i in table.take(wanted)] == [rows[r] for r in wanted]
    assert table[3].path == ODD and table[0].label is None and table[1].caption is None
    assert table[4].caption == "a photo 4\udce9"
    assert [_fields(i) for b in table.blocks(500) for i in b] == rows
    with pytest.raises(IndexError, match="no item 1200"):
        table.take([5, 1200])


def test_an_index_with_items_csv_is_converted_on_load_and_answers_the_same(tmp_path) -> None:
    X = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    index, spec, recall = build_index(X, choose_spec(50, 16))
    rows = _items(50)
    paths, labels, keys, _ = (list(column) for column in zip(*rows, strict=True))
    save_index(tmp_path, index, spec, recall, fingerprint=FINGERPRINT, paths=paths,
               labels=labels, keys=keys)  # fmt: skip
    # Make it as the previous format wrote it: items.csv and a format-1 index.json.
    (tmp_path / "items.sqlite").unlink()
    with open(tmp_path / "items.csv", "w", newline="", encoding="utf-8",
              errors="surrogateescape") as f:  # fmt: skip
        table = csv.writer(f)
        table.writerow(["row", "path", "label", "key"])
        table.writerows([i, p, lab or "", k] for i, (p, lab, k, _) in enumerate(rows))
    document = json.loads((tmp_path / "index.json").read_text())
    document.update(format="headstart-index/1", items_sha256=file_key(str(tmp_path / "items.csv")))
    (tmp_path / "index.json").write_text(json.dumps(document))

    loaded = load_index(tmp_path)
    assert [_fields(i) for i in loaded.items.take(range(50))] == [(*r[:3], None) for r in rows]
    assert json.loads((tmp_path / "index.json").read_text())["format"] == "headstart-index/2"
    again = load_index(tmp_path)  # now read as any new index
    assert again.items[3].path == ODD


def test_altered_items_are_refused(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    index, spec, recall = build_index(X, choose_spec(20, 8))
    paths, labels, keys, captions = (list(c) for c in zip(*_items(20), strict=True))
    save_index(tmp_path, index, spec, recall, fingerprint=FINGERPRINT, paths=paths,
               labels=labels, keys=keys, captions=captions)  # fmt: skip
    with open(tmp_path / "items.sqlite", "r+b") as f:
        f.seek(-50, 2)
        f.write(b"X")
    with pytest.raises(HeadstartError, match=r"items\.sqlite does not match index\.json"):
        load_index(tmp_path)


def test_a_table_from_before_captions_reads_and_grows_without_them(tmp_path: Path) -> None:
    """Item tables written before the caption column: read as items without captions, and
    an index add copies them under new rows that have one."""
    old = tmp_path / "old.sqlite"
    connection = sqlite3.connect(old)
    connection.execute(
        "CREATE TABLE items (row INTEGER PRIMARY KEY, path BLOB NOT NULL, label BLOB, "
        "key TEXT NOT NULL)"
    )
    connection.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?)",
        [(i, f"/img/{i}.jpg".encode(), b"cat", f"{i:064x}") for i in range(3)],
    )
    connection.commit()
    connection.close()
    table = ItemTable(old)
    assert [_fields(i) for i in table.take([2, 0])] == [
        ("/img/2.jpg", "cat", f"{2:064x}", None),
        ("/img/0.jpg", "cat", f"{0:064x}", None),
    ]
    table.close()
    new_row = ("/img/new.jpg", "dog", f"{9:064x}", "a dog")
    assert write_items(tmp_path / "grown.sqlite", [new_row], after=old) == 4
    grown = ItemTable(tmp_path / "grown.sqlite")
    assert [i.caption for b in grown.blocks() for i in b] == [None, None, None, "a dog"]
    assert _fields(grown[3]) == new_row
    grown.close()
