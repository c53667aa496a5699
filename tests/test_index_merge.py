"""IVF indexes built in parts with one trained quantizer (``--trained-from``) merge into one
(``headstart index merge``) that answers as an index built whole with that quantizer."""

from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import run_cli

from headstart.cache import Fingerprint
from headstart.errors import HeadstartError
from headstart.search.build import build_index
from headstart.search.merge import emptied, merge_indexes
from headstart.search.spec import IndexSpec
from headstart.search.store import load_index, save_index

FINGERPRINT = Fingerprint({"model": "test"}, {"model": "resnet18", "weights": "none"})


def _vectors(n: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(0).normal(size=(40, 32)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return centres[rng.integers(0, 40, n)] + rng.normal(size=(n, 32)).astype(np.float32) * 0.3


def _save(directory: Path, X: np.ndarray, start: int, kind: str, trained=None) -> None:
    spec = IndexSpec(kind, nlist=16, pq_m=8 if kind == "ivfpq" else 0)
    if trained is not None:
        spec, trained = trained.spec, emptied(trained)
    index, spec, recall = build_index(X, spec, target_recall=0.9, trained=trained)
    rows = range(start, start + len(X))
    save_index(directory, index, spec, recall, fingerprint=FINGERPRINT,
               paths=[f"/img/{i}.jpg" for i in rows], labels=["a"] * len(X),
               keys=[f"{i:064x}" for i in rows],
               captions=[None if i % 2 else f"photo {i}" for i in rows])  # fmt: skip


@pytest.mark.parametrize("kind", ["ivf", "ivfsq", "ivfpq"])
def test_parts_merge_into_the_index_built_whole(tmp_path: Path, kind: str) -> None:
    X = np.concatenate([_vectors(1500, 1), _vectors(1000, 2), _vectors(500, 3)])
    _save(tmp_path / "p1", X[:1500], 0, kind)
    first = load_index(tmp_path / "p1")
    _save(tmp_path / "p2", X[1500:2500], 1500, kind, trained=load_index(tmp_path / "p1"))
    _save(tmp_path / "p3", X[2500:], 2500, kind, trained=load_index(tmp_path / "p1"))
    merged = merge_indexes(tmp_path / "all", [tmp_path / f"p{i}" for i in (1, 2, 3)])
    assert (merged.count, merged.parts) == (3000, 3)
    loaded = load_index(tmp_path / "all")
    assert [(i.path, i.caption) for i in loaded.items.take([0, 1499, 1500, 2999])] == [
        ("/img/0.jpg", "photo 0"), ("/img/1499.jpg", None), ("/img/1500.jpg", "photo 1500"),
        ("/img/2999.jpg", None),
    ]  # fmt: skip
    # The index built whole with the first part's quantizer: same lists, same order.
    whole = emptied(first)
    whole.add(_normalised(X))
    faiss.extract_index_ivf(whole).nprobe = loaded.spec.nprobe
    queries = _normalised(_vectors(100, 9))
    got, want = loaded.search(queries, 10), whole.search(queries, 10)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)


def _normalised(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_parts_trained_apart_are_refused(tmp_path: Path) -> None:
    _save(tmp_path / "p1", _vectors(1000, 1), 0, "ivf")
    _save(tmp_path / "p2", _vectors(1000, 2), 1000, "ivf")  # its own quantizer
    with pytest.raises(HeadstartError, match="--trained-from") as refused:
        merge_indexes(tmp_path / "all", [tmp_path / "p1", tmp_path / "p2"])
    assert "\n" not in str(refused.value) and not (tmp_path / "all").exists()
    with pytest.raises(HeadstartError, match="new directory"):
        merge_indexes(tmp_path / "p1", [tmp_path / "p1", tmp_path / "p2"])


def test_parts_from_embeddings_files_merge_through_the_cli(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _vectors(2000, 1))
    np.save(tmp_path / "b.npy", _vectors(1000, 2))
    first = run_cli("index", "build", "--from-embeddings", tmp_path / "a.npy", "--kind", "ivf",
                    "-o", tmp_path / "p1")  # fmt: skip
    assert first.exit_code == 0, first.output
    second = run_cli("index", "build", "--from-embeddings", tmp_path / "b.npy",
                     "--trained-from", tmp_path / "p1", "-o", tmp_path / "p2")  # fmt: skip
    assert second.exit_code == 0, second.output
    merged = run_cli("index", "merge", tmp_path / "all", tmp_path / "p1", tmp_path / "p2")
    assert merged.exit_code == 0 and "3000 vectors" in merged.output, merged.output
    loaded = load_index(tmp_path / "all")
    assert loaded.items[2000].path == "b.npy#0"
    _, rows = loaded.search(np.load(tmp_path / "b.npy")[:50], 1)
    assert (rows[:, 0] == np.arange(2000, 2050)).all()
    flat = run_cli("index", "build", "--from-embeddings", tmp_path / "a.npy", "--kind", "flat",
                   "-o", tmp_path / "f")  # fmt: skip
    assert flat.exit_code == 0
    refused = run_cli("index", "build", "--from-embeddings", tmp_path / "b.npy",
                      "--trained-from", tmp_path / "f", "-o", tmp_path / "x")  # fmt: skip
    assert refused.exit_code == 1 and "needs an IVF index" in refused.output


def test_parts_of_images_merge_with_their_thumbnails(tmp_path: Path) -> None:
    from helpers import FAST_ARGS, make_colour_folder

    make_colour_folder(tmp_path / "a", per_class=3)
    make_colour_folder(tmp_path / "b", per_class=2, start_seed=50)
    common = [*FAST_ARGS, "--cache", tmp_path / "cache", "-q"]
    first = run_cli("index", "build", tmp_path / "a", *common, "--kind", "ivf",
                    "-o", tmp_path / "p1")  # fmt: skip
    assert first.exit_code == 0, first.output
    second = run_cli("index", "build", tmp_path / "b", *common, "--trained-from", tmp_path / "p1",
                     "-o", tmp_path / "p2")  # fmt: skip
    assert second.exit_code == 0, second.output
    merged = run_cli("index", "merge", tmp_path / "all", tmp_path / "p1", tmp_path / "p2")
    assert merged.exit_code == 0, merged.output
    parts = [load_index(tmp_path / p) for p in ("p1", "p2")]
    loaded = load_index(tmp_path / "all")
    assert len(loaded.thumbnails) == loaded.index.ntotal == 15
    for row, (part, own) in enumerate([(0, r) for r in range(9)] + [(1, r) for r in range(6)]):
        assert loaded.items[row] == parts[part].items[own]
        assert loaded.thumbnails.get(row) == parts[part].thumbnails.get(own)
