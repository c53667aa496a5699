"""Files are published whole or not at all, by one helper every writer uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from headstart.atomic import atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "head.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half of the new")
        raise RuntimeError("the writer died")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.json"]


def test_the_temporary_is_hidden_beside_the_file_and_keeps_its_suffix(tmp_path: Path) -> None:
    # np.savez appends ".npz" to a name without it: the published file would be missing.
    target = tmp_path / "arrays.npz"
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".tmp-")
        assert temporary.suffix == ".npz"
        np.savez(temporary, coef=np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz"]
    np.testing.assert_array_equal(np.load(target)["coef"], np.arange(3))


def test_concurrent_writers_get_their_own_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "memo.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer block ends last: its file is the one kept
