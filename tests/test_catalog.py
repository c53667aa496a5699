import multiprocessing
import os
from pathlib import Path

from headstart.cache import FailureRecord, FileCatalog, FileRecord


def test_stat_index_and_ledger_exclude_each_other(tmp_path: Path) -> None:
    with FileCatalog(tmp_path / "catalog.sqlite") as catalog:
        catalog.record([FileRecord("/a.jpg", 10, 1, "k1", "cat")])
        catalog.record(failures=[FailureRecord("/b.jpg", 5, 2, "truncated")])
        assert catalog.lookup(["/a.jpg", "/b.jpg"]) == {
            "/a.jpg": FileRecord("/a.jpg", 10, 1, "k1", "cat")
        }
        assert catalog.lookup_failures(["/b.jpg"])["/b.jpg"].reason == "truncated"

        # /b.jpg was repaired, /a.jpg got corrupted
        catalog.record([FileRecord("/b.jpg", 6, 3, "k2")], [FailureRecord("/a.jpg", 3, 4, "bad")])
        assert set(catalog.lookup(["/a.jpg", "/b.jpg"])) == {"/b.jpg"}
        assert [f.path for f in catalog.iter_failures()] == ["/a.jpg"]
        assert (catalog.count_files(), catalog.count_failures()) == (1, 1)


def test_lookup_and_iteration_handle_many_paths(tmp_path: Path) -> None:
    records = [FileRecord(f"/img/{i:05d}.jpg", i, i, f"k{i}") for i in range(2500)]
    with FileCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.record(records)
        assert len(catalog.lookup([r.path for r in records])) == 2500
        chunks = list(catalog.iter_files(chunk=1000))
        assert [len(c) for c in chunks] == [1000, 1000, 500]
        assert [r for c in chunks for r in c] == records


def test_two_connections_share_the_database(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with FileCatalog(path) as one, FileCatalog(path) as two:
        one.record([FileRecord("/a.jpg", 1, 1, "k")])
        assert two.lookup(["/a.jpg"])["/a.jpg"].key == "k"


def test_failure_matches_only_the_same_file_version() -> None:
    failure = FailureRecord("/a.jpg", 10, 99, "truncated")
    assert failure.matches(10, 99) and not failure.matches(10, 100)


def _open_and_record(path: str, barrier, index: int) -> None:
    barrier.wait()  # every process creates the catalog at the same moment, as torchrun ranks do
    with FileCatalog(Path(path)) as catalog:
        catalog.record([FileRecord(f"/img/{index}.jpg", index, index, f"k{index}")])


def test_processes_creating_one_catalog_at_once_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for trial in range(15):
        path = tmp_path / f"catalog{trial}.sqlite"
        barrier = context.Barrier(6)
        processes = [
            context.Process(target=_open_and_record, args=(str(path), barrier, i)) for i in range(6)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [p.exitcode for p in processes] == [0] * 6
        with FileCatalog(path) as catalog:
            assert catalog.count_files() == 6


def test_paths_and_labels_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    latin = os.fsdecode(b"/photos/caf\xe9/cr\xe8me.jpg")
    label = os.fsdecode(b"caf\xe9")
    with FileCatalog(tmp_path / "c.sqlite") as catalog:
        catalog.record([FileRecord(latin, 1, 2, "k1", label), FileRecord("/plain.jpg", 3, 4, "k2")])
        catalog.record(failures=[FailureRecord(latin + ".bad", 5, 6, "truncated", label)])
        assert catalog.lookup([latin, "/plain.jpg"]) == {
            latin: FileRecord(latin, 1, 2, "k1", label),
            "/plain.jpg": FileRecord("/plain.jpg", 3, 4, "k2"),
        }
        assert [r for chunk in catalog.iter_files(chunk=1) for r in chunk] == [
            FileRecord("/plain.jpg", 3, 4, "k2"),
            FileRecord(latin, 1, 2, "k1", label),
        ]
        assert list(catalog.iter_failures()) == [
            FailureRecord(latin + ".bad", 5, 6, "truncated", label)
        ]
        assert catalog.lookup_failures([latin + ".bad"])[latin + ".bad"].label == label
        catalog.record([FileRecord(latin + ".bad", 7, 8, "k3")])  # repaired: leaves the ledger
        assert catalog.count_failures() == 0 and catalog.count_files() == 3
