"""``index build --from-embeddings``: an index of the vectors of a .npy or Parquet file, read a
block at a time, as autofaiss builds one."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_cli

from headstart.errors import HeadstartError
from headstart.search.embeddings_file import ParquetVectors, open_embeddings
from headstart.search.exact import exact_search, l2_normalize
from headstart.search.store import load_index


def _vectors(n: int = 3000, d: int = 32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def _parquet(path: Path, X: np.ndarray, column: str = "vec") -> Path:
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1])
    table = pa.table({"id": np.arange(len(X)), column: vectors})
    pq.write_table(table, path, row_group_size=700)
    return path


def test_parquet_vectors_read_in_blocks_as_the_array(tmp_path: Path) -> None:
    X = _vectors()
    vectors = ParquetVectors(_parquet(tmp_path / "x.parquet", X), "vec", block_rows=333)
    assert (vectors.count, vectors.dim) == X.shape
    blocks = list(vectors.blocks())
    assert max(len(b) for _, b in blocks) <= 333
    np.testing.assert_allclose(np.concatenate([b for _, b in blocks]), l2_normalize(X), rtol=1e-6)
    rows = np.array([0, 5, 332, 333, 2999])
    np.testing.assert_allclose(vectors.take(rows), l2_normalize(X[rows]), rtol=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_an_index_built_from_a_file_answers_as_exact_search(tmp_path: Path, suffix) -> None:
    X = _vectors()
    file = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(file, X)
    else:
        _parquet(file, X, "embedding")  # the default column name
    built = run_cli("index", "build", "--from-embeddings", file, "--kind", "flat",
                    "-o", tmp_path / "index")  # fmt: skip
    assert built.exit_code == 0, built.output
    assert "indexed 3000 vectors" in built.output
    loaded = load_index(tmp_path / "index")
    queries = l2_normalize(np.random.default_rng(1).normal(size=(20, 32)))
    np.testing.assert_array_equal(
        loaded.search(queries, 5)[1], exact_search(l2_normalize(X), queries, 5)[1]
    )
    assert loaded.items[7].path == f"x{suffix}#7" and loaded.items[7].label is None
    assert loaded.thumbnails is None


def test_an_ivf_index_from_parquet_finds_each_vector(tmp_path: Path) -> None:
    X = _vectors(5000)
    file = _parquet(tmp_path / "x.parquet", X)
    built = run_cli("index", "build", "--from-embeddings", file, "--vector-column", "vec",
                    "--kind", "ivf", "-o", tmp_path / "index")  # fmt: skip
    assert built.exit_code == 0, built.output
    _, rows = load_index(tmp_path / "index").search(X, 1)
    assert (rows[:, 0] == np.arange(5000)).all()
    duplicates = run_cli("knn", tmp_path / "index", "--duplicates", "0.999")
    assert duplicates.exit_code == 0 and "0 pairs" in duplicates.output


def test_unusable_embeddings_files_are_refused_in_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(HeadstartError, match="want vectors"):
        open_embeddings(tmp_path / "flat.npy")
    file = _parquet(tmp_path / "x.parquet", _vectors(10))
    missing = run_cli("index", "build", "--from-embeddings", file, "-o", tmp_path / "i")
    assert missing.exit_code == 1 and "no column 'embedding'" in missing.output
    assert "--vector-column" in missing.output and "Traceback" not in missing.output
    both = run_cli("index", "build", tmp_path, "--from-embeddings", file, "-o", tmp_path / "i")
    assert both.exit_code == 2 and "not both" in both.output
    nothing = run_cli("index", "build", "-o", tmp_path / "i")
    assert nothing.exit_code == 2 and "--from-embeddings" in nothing.output
