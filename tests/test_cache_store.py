from pathlib import Path

import h5py
import numpy as np
import pytest

from headstart.cache import EmbeddingCache, Fingerprint, KeySet, ShardWriter, content_key
from headstart.cache.maintenance import compact
from headstart.cache.shards import (
    publish_shard,
    read_rows_at,
    read_shard_info,
    read_shard_rows,
    row_layout,
    shard_paths,
)
from headstart.cache.store import StalePlacement
from headstart.errors import HeadstartError

FP = Fingerprint({"model": "test", "precision": "fp32"})


def keys_for(*names: str) -> np.ndarray:
    return np.array([content_key(n.encode()) for n in names], dtype="S64")


def test_shard_is_self_describing_and_published_atomically(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    path = publish_shard(tmp_path, FP.id, keys_for("a", "b", "c"), vectors)

    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    info = read_shard_info(path)
    assert (info.fingerprint, info.count, info.dim, info.dtype) == (FP.id, 3, 4, "float16")
    with h5py.File(path) as f:
        assert {"headstart_version", "h5py_version", "created_unix"} <= set(f.attrs)
        np.testing.assert_allclose(f["embeddings"][()], vectors, rtol=1e-3, atol=1e-3)


def test_float16_overflow_falls_back_to_float32(tmp_path: Path) -> None:
    vectors = np.array([[1.0, 1e6]], dtype=np.float32)
    path = publish_shard(tmp_path, FP.id, keys_for("a"), vectors)
    assert read_shard_info(path).dtype == "float32"
    with h5py.File(path) as f:
        assert f["embeddings"][0, 1] == 1e6


def test_store_reads_back_by_key_in_any_order(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    store = cache.create(FP)
    vectors = np.arange(20, dtype=np.float32).reshape(5, 4)
    keys = keys_for("a", "b", "c", "d", "e")
    with ShardWriter(store, shard_rows=2, dtype="float32") as writer:
        writer.add(keys, vectors)

    store = cache.open(FP.id[:6])
    assert len(store) == 5 and len(store.shards) == 3
    np.testing.assert_array_equal(store.get(keys[[4, 0, 2, 2]]), vectors[[4, 0, 2, 2]])
    chunks = list(store.iter_chunks())
    assert sum(len(c.keys) for c in chunks) == 5
    with pytest.raises(HeadstartError, match="1 of 2 keys are not in"):
        store.get(keys_for("a", "zzz"))


def test_duplicate_keys_read_from_the_newest_shard(tmp_path: Path) -> None:
    store = EmbeddingCache(tmp_path).create(FP)
    first = publish_shard(store.shards_directory, FP.id, keys_for("a"), np.ones((1, 2), np.float32))
    publish_shard(store.shards_directory, FP.id, keys_for("a", "b"), np.zeros((2, 2), np.float32))
    store.refresh()
    assert shard_paths(store.shards_directory)[0] == first
    assert len(store) == 2
    np.testing.assert_array_equal(store.get(keys_for("a")), [[0.0, 0.0]])
    assert sum(len(c.keys) for c in store.iter_chunks()) == 2


def test_writer_publishes_by_age_and_on_close(tmp_path: Path) -> None:
    store = EmbeddingCache(tmp_path).create(FP)
    writer = ShardWriter(store, shard_rows=100, max_age_s=0.0)
    writer.add(keys_for("a"), np.ones((1, 2), np.float32))
    assert writer.published_shards == 1  # too old at once
    writer = ShardWriter(store, shard_rows=100, max_age_s=3600)
    writer.add(keys_for("b"), np.ones((1, 2), np.float32))
    assert writer.published_shards == 0
    writer.close()
    assert writer.published_shards == 1
    store.refresh()
    assert len(store) == 2


def test_fingerprint_json_is_written_once_and_found_by_prefix(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.create(FP)
    other = Fingerprint({"model": "other"})
    cache.create(other)
    assert {fp.id for fp in cache.fingerprints()} == {FP.id, other.id}
    assert cache.find(FP.id[:5]) == FP
    with pytest.raises(HeadstartError, match="several fingerprints"):
        cache.find()
    with pytest.raises(HeadstartError, match="no fingerprint"):
        cache.find("zzzz")


def test_keyset_membership_survives_merges() -> None:
    keys = keys_for(*[str(i) for i in range(10)])
    found = KeySet(keys[:5])
    found._MERGE_AT = 2  # force the merge path
    found.add(keys[5:8])
    mask = found.contains(keys)
    assert mask.tolist() == [True] * 8 + [False] * 2
    assert len(found) == 8 and keys[9].decode() not in found


def test_sparse_reads_from_a_large_shard_keep_the_order_asked_for(tmp_path: Path) -> None:
    store = EmbeddingCache(tmp_path).create(FP)
    keys = keys_for(*[str(i) for i in range(100)])
    vectors = np.arange(300, dtype=np.float32).reshape(100, 3)
    with ShardWriter(store, shard_rows=1000, dtype="float32") as writer:
        writer.add(keys, vectors)
    store.refresh()
    wanted = [97, 3, 3, 50]  # few rows (the HDF5 selection path), repeated, out of order
    np.testing.assert_array_equal(store.get(keys[wanted]), vectors[wanted])


def test_rows_read_by_byte_offset_are_the_rows_hdf5_reads(tmp_path: Path) -> None:
    vectors = np.random.default_rng(1).normal(size=(500, 6)).astype(np.float32)
    path = publish_shard(tmp_path, FP.id, keys_for(*map(str, range(500))), vectors)
    layout = row_layout(path)
    assert layout is not None and (layout.count, layout.dim) == (500, 6)
    for rows in (
        [499, 0, 7, 7, 250],  # sparse, repeated, out of order: one read per run
        [10, 11, 12, 40, 41, 3],  # runs of consecutive rows
        list(range(100, 160))[::-1],  # dense: one read of the span, then a gather
        [],
    ):
        np.testing.assert_array_equal(
            read_rows_at(path, layout, np.array(rows, np.int64)), read_shard_rows(path, rows)
        )
    with pytest.raises(ValueError, match="outside 500"):
        read_rows_at(path, layout, np.array([500]))


def test_a_chunked_shard_is_read_through_hdf5(tmp_path: Path) -> None:
    store = EmbeddingCache(tmp_path).create(FP)
    store.shards_directory.mkdir(parents=True)
    vectors = np.arange(40, dtype=np.float32).reshape(10, 4)
    keys = keys_for(*map(str, range(10)))
    path = publish_shard(store.shards_directory, FP.id, keys, vectors)
    with h5py.File(path, "a") as f:  # as another HDF5 writer might lay it out
        del f["embeddings"]
        f.create_dataset("embeddings", data=vectors.astype(np.float16), chunks=(4, 4))
    assert row_layout(path) is None
    store.refresh()
    np.testing.assert_array_equal(store.get(keys[[9, 2, 5]]), vectors[[9, 2, 5]])


def test_placed_rows_read_the_same_vectors_and_say_when_their_shard_is_gone(
    tmp_path: Path,
) -> None:
    cache = EmbeddingCache(tmp_path)
    vectors = np.arange(60, dtype=np.float32).reshape(15, 4)
    keys = keys_for(*map(str, range(15)))
    with ShardWriter(cache.create(FP), shard_rows=4, dtype="float32") as writer:
        writer.add(keys, vectors)
    store = cache.open(FP)
    wanted = keys[[14, 0, 5, 5, 9]]
    found, locations = store.place(wanted)
    names = list(store.shard_names)
    assert found.all() and len(names) == 4
    np.testing.assert_array_equal(store.read_placed(names, locations), store.get(wanted))
    assert not store.place(keys_for("absent"))[0].any()
    compact(cache, FP)  # replaces the four shards with one
    with pytest.raises(StalePlacement):
        store.read_placed(names, locations)
    np.testing.assert_array_equal(store.get(wanted), vectors[[14, 0, 5, 5, 9]])
