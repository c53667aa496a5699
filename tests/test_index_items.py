"""An index's items on disk: read by row, exact for odd file names, and older indexes'
items.csv converted on first load."""

import csv
import json
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
    return [(ODD if i == 3 else f"/img/{i}.jpg", None if i % 5 == 0 else f"c{i % 3}", f"{i:064x}")
            for i in range(n)]  # fmt: skip


def test_items_read_back_by_row_exactly_in_any_order(tmp_path: Path) -> None:
    rows = _items(1200)
    assert write_items(tmp_path / "items.sqlite", iter(rows)) == 1200
    table = ItemTable(tmp_path / "items.sqlite")
    assert len(table) == 1200
    wanted = [1100, 3, 0, 3, 777]  # repeats and more than one query's worth are fine
    assert [(i.path, i.label, i.key) for i in table.take(wanted)] == [rows[r] for r in wanted]
    assert table[3].path == ODD and table[0].label is None
    assert [(i.path, i.label, i.key) for b in table.blocks(500) for i in b] == rows
    with pytest.raises(IndexError, match="no item 1200"):
        table.take([5, 1200])


def test_an_index_with_items_csv_is_converted_on_load_and_answers_the_same(tmp_path) -> None:
    X = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    index, spec, recall = build_index(X, choose_spec(50, 16))
    rows = _items(50)
    paths, labels, keys = (list(column) for column in zip(*rows, strict=True))
    save_index(tmp_path, index, spec, recall, fingerprint=FINGERPRINT, paths=paths,
               labels=labels, keys=keys)  # fmt: skip
    # Make it as the previous format wrote it: items.csv and a format-1 index.json.
    (tmp_path / "items.sqlite").unlink()
    with open(tmp_path / "items.csv", "w", newline="", encoding="utf-8",
              errors="surrogateescape") as f:  # fmt: skip
        table = csv.writer(f)
        table.writerow(["row", "path", "label", "key"])
        table.writerows([i, p, lab or "", k] for i, (p, lab, k) in enumerate(rows))
    document = json.loads((tmp_path / "index.json").read_text())
    document.update(format="headstart-index/1", items_sha256=file_key(str(tmp_path / "items.csv")))
    (tmp_path / "index.json").write_text(json.dumps(document))

    loaded = load_index(tmp_path)
    assert [(i.path, i.label, i.key) for i in loaded.items.take(range(50))] == rows
    assert json.loads((tmp_path / "index.json").read_text())["format"] == "headstart-index/2"
    again = load_index(tmp_path)  # now read as any new index
    assert again.items[3].path == ODD


def test_altered_items_are_refused(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    index, spec, recall = build_index(X, choose_spec(20, 8))
    paths, labels, keys = (list(c) for c in zip(*_items(20), strict=True))
    save_index(tmp_path, index, spec, recall, fingerprint=FINGERPRINT, paths=paths,
               labels=labels, keys=keys)  # fmt: skip
    with open(tmp_path / "items.sqlite", "r+b") as f:
        f.seek(-50, 2)
        f.write(b"X")
    with pytest.raises(HeadstartError, match=r"items\.sqlite does not match index\.json"):
        load_index(tmp_path)
