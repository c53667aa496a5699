from pathlib import Path

import numpy as np
import pytest

from headstart.cache import Fingerprint
from headstart.errors import HeadstartError
from headstart.search.build import build_index
from headstart.search.exact import exact_search, l2_normalize
from headstart.search.spec import IndexSpec, choose_spec
from headstart.search.store import load_index, save_index
from headstart.sizes import parse_size

FINGERPRINT = Fingerprint({"model": "test"}, {"model": "resnet18", "weights": "none"})


def clustered(n: int, d: int = 32, clusters: int = 50, noise_seed: int = 0) -> np.ndarray:
    centres = np.random.default_rng(0).normal(size=(clusters, d))
    rng = np.random.default_rng(noise_seed + 1)
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d)) * 0.4).astype(
        np.float32
    )


def test_flat_search_returns_exactly_the_brute_force_neighbors() -> None:
    database = l2_normalize(np.random.default_rng(0).normal(size=(2000, 64)))
    queries = l2_normalize(np.random.default_rng(1).normal(size=(50, 64)))
    similarities, rows = exact_search(database, queries, 10)
    scores = queries @ database.T
    expected = np.argsort(-scores, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(similarities, np.take_along_axis(scores, expected, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "ivfsq"])
def test_approximate_index_reaches_its_printed_recall(kind: str) -> None:
    X = clustered(30_000)
    index, spec, recall = build_index(X, IndexSpec(kind, nlist=256), target_recall=0.9)
    assert spec.nprobe < spec.nlist and recall >= 0.9
    queries = l2_normalize(clustered(300, noise_seed=5))  # fresh queries, same distribution
    truth = exact_search(l2_normalize(X), queries, 10)[1]
    found = index.search(queries, 10)[1]
    measured = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert measured >= recall - 0.03


@pytest.mark.parametrize(
    ("n", "budget", "kind"),
    [
        (50_000, None, "flat"),
        (200_000, None, "ivf"),
        (1_000_000, 4 * 2**30, "ivf"),  # float32 fits: no compression
        (1_000_000, 800 * 2**20, "ivfsq"),  # a byte a dimension fits, with the lists growing
        (1_000_000, 128 * 2**20, "ivfpq"),
    ],
)
def test_auto_follows_the_faiss_guidelines(n: int, budget: int | None, kind: str) -> None:
    spec = choose_spec(n, 512, "auto", budget)
    assert spec.kind == kind
    if kind != "flat":
        assert spec.nlist == 2 ** round(np.log2(4 * np.sqrt(n)))
    if kind == "ivfpq":
        # The largest code that fits, its ids and the lists' growth counted.
        assert spec.pq_m == 64 and n * (spec.pq_m + 8) * 1.3 <= budget


def test_tuning_a_compressed_index_stops_where_recall_stops_improving(caplog) -> None:
    # Product quantisation caps recall well below 0.999; probing all 256 lists would make
    # every search as slow as exhaustive search for no better answers.
    X = clustered(20_000)
    index, spec, recall = build_index(X, IndexSpec("ivfpq", nlist=256, pq_m=4), target_recall=0.999)
    assert recall < 0.999 and spec.nprobe < 64
    assert index.nprobe == spec.nprobe
    assert "stays below the 0.999 target" in caplog.text


@pytest.mark.parametrize("n", [60, 200, 1000])
def test_a_product_quantised_index_builds_on_a_small_collection(n: int, caplog) -> None:
    # Fewer vectors than a PQ codebook's 256 codes once crashed inside FAISS's k-means.
    spec = choose_spec(n, 32, "ivfpq")
    assert 2**spec.pq_nbits <= n
    X = clustered(n)
    index, spec, recall = build_index(X, spec)
    assert index.ntotal == n
    # The recall it reports is the recall it has, on fresh queries, and compression keeps most
    # neighbors (0.90-0.97 measured; 10 of n at random).
    queries = l2_normalize(clustered(100, noise_seed=5))
    truth = exact_search(l2_normalize(X), queries, 10)[1]
    found = index.search(queries, 10)[1]
    measured = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert measured >= 0.7 and abs(measured - recall) <= 0.1, (measured, recall)
    assert "product quantisation trained on" in caplog.text  # said once, not per sub-quantizer
    assert caplog.text.count("product quantisation") == 1


def test_memory_sizes_parse() -> None:
    assert parse_size("2G") == 2 * 2**30 and parse_size("512M") == 512 * 2**20
    with pytest.raises(HeadstartError, match="as a size"):
        parse_size("lots")


def test_saved_index_round_trips_and_refuses_tampering(tmp_path: Path) -> None:
    X = clustered(500)
    X[7] = X[3]  # an exact duplicate
    index, spec, recall = build_index(X, choose_spec(len(X), X.shape[1]))
    paths = [f"/img/{i}.jpg" for i in range(len(X))]
    save_index(tmp_path, index, spec, recall, fingerprint=FINGERPRINT, paths=paths,
               labels=["a"] * len(X), keys=[f"{i:064x}" for i in range(len(X))])  # fmt: skip

    loaded = load_index(tmp_path)
    _, rows = loaded.search(X[:3], 1)
    assert rows[:, 0].tolist() == [0, 1, 2] and loaded.items[2].path == "/img/2.jpg"
    assert (3, 7) in {(i, j) for i, j, _ in loaded.near_duplicates(0.9999)}

    data = (tmp_path / "index.faiss").read_bytes()
    (tmp_path / "index.faiss").write_bytes(data[:100] + b"\0" * 8 + data[108:])
    with pytest.raises(HeadstartError, match="altered or damaged"):
        load_index(tmp_path)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfsq", "ivfpq"])
@pytest.mark.parametrize("n", [12, 40, 300])
def test_every_kind_builds_and_finds_each_vector_on_small_collections(kind: str, n: int) -> None:
    X = clustered(n)
    spec = choose_spec(n, X.shape[1], kind)
    index, spec, recall = build_index(X, spec)
    assert spec.kind == kind and 0 < recall <= 1
    # Each vector's own row is its nearest neighbor, whatever the index compresses.
    found = index.search(l2_normalize(X), 1)[1][:, 0]
    exact = kind in ("flat", "hnsw", "ivf")
    assert (found == np.arange(n)).mean() >= (1.0 if exact else 0.5)
