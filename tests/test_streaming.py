"""Training out of core: block sources over the cache, and streaming fits that reach the
in-memory optimum.

Tolerances (stated once, for all the streaming tests): on data that fits, a streamed fit's
coefficients are within 1e-3 of the in-memory fit's (relative to the largest coefficient, for
logreg whose two fits stop at the same gradient tolerance from different standardisers and
preconditioner samples; 1e-5 for ridge and ncm, exact sums in float64), its probabilities
within 1e-3, and its predictions agree on at least 99.5% of rows. The kNN head's float16 codes
give cosines within 2e-3 of an exact float32 search, the same prediction on at least 99.5% of
queries, and votes within 0.01 on at least 99% of them.
"""

from pathlib import Path

import numpy as np
import pytest
from synthetic_cache import lay_out

from headstart.cache import EmbeddingCache, Fingerprint
from headstart.classify.data import (
    plan_rows,
    read_embedded,
    split_planned,
    stratified_split,
    stratified_split_codes,
)
from headstart.errors import HeadstartError

FINGERPRINT = Fingerprint({"model": "synthetic", "dim": 48})
COEF_TOL, PROBA_TOL, AGREEMENT = 1e-3, 1e-3, 0.995


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory):
    """1,500 rows of 48 dimensions in 5 classes, laid out in a cache (float16 shards)."""
    root = tmp_path_factory.mktemp("streamed")
    images = lay_out(root, FINGERPRINT, 1500, 48, 5, block=400)
    cache = EmbeddingCache(root / "cache")
    planned = plan_rows([str(images)], cache, FINGERPRINT)
    # The in-memory path's arrays: the same rows, read whole as today's `Embedded.X` does.
    embedded = read_embedded([str(images)], cache, FINGERPRINT)
    return planned, embedded, images, cache


def _assert_same_head(streamed, in_memory, X, tol: float) -> None:
    scale = max(float(np.abs(in_memory.coef_).max()), 1.0)
    np.testing.assert_allclose(streamed.coef_, in_memory.coef_, atol=tol * scale)
    np.testing.assert_allclose(
        streamed.predict_proba(X), in_memory.predict_proba(X), atol=PROBA_TOL
    )
    assert np.mean(streamed.predict(X) == in_memory.predict(X)) >= AGREEMENT


def test_a_planned_source_reads_the_cache_in_blocks_as_today(cached) -> None:
    planned, embedded, _, _ = cached
    source = planned.source.with_block_rows(256)
    assert len(source) == len(embedded.keys) == 1500 and source.dim == 48
    blocks = list(source.blocks())
    assert max(len(X) for X, _ in blocks) == 256 and blocks[0][0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([X for X, _ in blocks]), embedded.X)
    labels = np.concatenate([source.classes[y] for _, y in blocks])
    np.testing.assert_array_equal(labels, embedded.labels.astype(str))
    # Restartable: a second pass reads the same rows.
    np.testing.assert_array_equal(next(source.blocks())[0], blocks[0][0])
    assert source.codes.dtype == np.int32


def test_the_split_of_codes_is_the_split_of_labels(cached, tmp_path: Path) -> None:
    planned, embedded, _, cache = cached
    labels = embedded.labels.astype(str)
    for seed in (0, 7):
        expected = stratified_split(labels, 0.2, seed)
        classes, codes = np.unique(labels, return_inverse=True)
        for mine, theirs in zip(
            stratified_split_codes(codes, classes, 0.2, seed), expected, strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)
        train, val = split_planned(planned, (), 0.2, seed, None, cache.root, purpose="training")
        np.testing.assert_array_equal(train.read_all(), embedded.X[expected[0]])
        np.testing.assert_array_equal(val.read_all(), embedded.X[expected[1]])
    with pytest.raises(HeadstartError, match="fewer than 2"):
        stratified_split_codes(np.array([0, 0, 1]), np.array(["a", "b"]), 0.5)
