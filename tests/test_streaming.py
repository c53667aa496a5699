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
from synthetic_cache import class_vectors, lay_out

from headstart.cache import EmbeddingCache, Fingerprint
from headstart.cache.maintenance import compact
from headstart.classify.blocks import ArrayBlocks, ChainedBlocks
from headstart.classify.data import (
    plan_rows,
    read_embedded,
    split_planned,
    stratified_split,
    stratified_split_codes,
)
from headstart.classify.linear import (
    LogisticRegressionHead,
    RidgeHead,
    logistic_path,
    refit_logistic,
)
from headstart.classify.neighbors import (
    KNNHead,
    NearestClassMeanHead,
    exact_search,
    knn_votes,
    l2_normalize,
)
from headstart.classify.persist import load_head, save_head
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


def test_a_planned_source_reads_by_key_once_compaction_replaced_its_shards(
    tmp_path: Path,
) -> None:
    images = lay_out(tmp_path, FINGERPRINT, 600, 8, 3, block=100, shard_rows=100)
    cache = EmbeddingCache(tmp_path / "cache")
    source = plan_rows([str(images)], cache, FINGERPRINT).source.with_block_rows(128)
    before = source.read_all()
    assert len(source.placed.shard_names) == 6
    compact(cache, FINGERPRINT)  # the six shards the rows were placed in are gone
    assert not any(
        (source.store.shards_directory / name).exists() for name in source.placed.shard_names
    )
    np.testing.assert_array_equal(source.read_all(), before)
    np.testing.assert_array_equal(source.rows(np.array([3, 599])), before[[3, 599]])


@pytest.mark.parametrize("C", [1e-3, 1.0])
def test_streamed_logreg_reaches_the_in_memory_optimum(cached, C: float) -> None:
    planned, embedded, _, _ = cached
    X, y = embedded.X, embedded.labels.astype(str)
    in_memory = LogisticRegressionHead(C=C, device="cpu").fit(X, y)
    streamed = LogisticRegressionHead(C=C, device="cpu").fit_blocks(
        planned.source.with_block_rows(300)
    )
    np.testing.assert_array_equal(streamed.classes_, in_memory.classes_)
    _assert_same_head(streamed, in_memory, X, COEF_TOL)


@pytest.mark.parametrize("classes", [2, 5])
def test_streamed_ridge_solves_scikit_learns_problem(classes: int) -> None:
    X, codes = class_vectors(900, 24, classes, seed=3)
    X = X * np.linspace(0.5, 4, 24, dtype=np.float32) + 2  # unequal scales, off-centre
    for alpha in (0.1, 100.0):
        in_memory = RidgeHead(alpha=alpha).fit(X, codes)
        streamed = RidgeHead(alpha=alpha, device="cpu").fit_blocks(ArrayBlocks.of(X, codes, 128))
        _assert_same_head(streamed, in_memory, X, 1e-5)
        np.testing.assert_allclose(streamed.intercept_, in_memory.intercept_, atol=1e-5)


def test_streamed_ncm_has_the_in_memory_centroids(cached) -> None:
    planned, embedded, _, _ = cached
    in_memory = NearestClassMeanHead().fit(embedded.X, embedded.labels.astype(str))
    streamed = NearestClassMeanHead(device="cpu").fit_blocks(planned.source.with_block_rows(200))
    np.testing.assert_allclose(streamed.centroids_, in_memory.centroids_, atol=1e-5)
    np.testing.assert_array_equal(streamed.predict(embedded.X), in_memory.predict(embedded.X))


def test_the_lockstep_path_reaches_each_separate_fit() -> None:
    X, codes = class_vectors(1200, 32, 4, seed=5)
    Cs = [1e-3, 1e-2, 1e-1]
    points = list(
        logistic_path(X[:900], codes[:900], X[900:], codes[900:], Cs, device="cpu", tol=1e-6,
                      max_evals=500, lockstep=True)
    )  # fmt: skip
    assert [p.C for p in points] == Cs
    assert len({p.evaluations for p in points}) == 1  # one pass served every C
    for point in points:
        alone = LogisticRegressionHead(C=point.C, device="cpu").fit(X[:900], codes[:900])
        _assert_same_head(point.head, alone, X, COEF_TOL)
        assert point.val_accuracy == pytest.approx(alone.score(X[900:], codes[900:]), abs=0.01)


def test_refit_reads_train_then_validation_without_joining_them(cached) -> None:
    planned, _, _, cache = cached
    train, val = split_planned(planned, (), 0.2, 0, None, cache.root, purpose="training")
    head = LogisticRegressionHead(C=0.1, device="cpu").fit_blocks(train)
    chained = ChainedBlocks([train, val])
    assert len(chained) == 1500
    streamed = refit_logistic(head, chained)
    X = np.concatenate([train.read_all(), val.read_all()])
    y = np.concatenate([train.labels(), val.labels()])
    in_memory = LogisticRegressionHead(C=0.1, device="cpu").fit(X, y)
    _assert_same_head(streamed, in_memory, X, COEF_TOL)


def test_knn_searches_float16_codes_with_exact_searchs_answers(tmp_path: Path) -> None:
    X, codes = class_vectors(3000, 64, 6, seed=9)
    queries = X[2500:]
    head = KNNHead(k=10).fit_blocks(ArrayBlocks.of(X[:2500], codes[:2500], 256))
    assert head.database_.dtype == np.float16 and head.database_.shape == (2500, 64)
    similarities, _ = head.neighbors(queries, 10)
    exact, rows = exact_search(l2_normalize(X[:2500]), l2_normalize(queries), 10)
    np.testing.assert_allclose(similarities, exact, atol=2e-3)
    # What the head answered before: a vote over an exact float32 search.
    before = knn_votes(exact, codes[:2500][rows], 6, vote="weighted", temperature=0.07)
    assert np.mean(head.predict(queries) == before.argmax(axis=1)) >= AGREEMENT
    # A near-tie at the k-th neighbour may swap which vector votes; elsewhere votes agree.
    close = np.abs(head.predict_proba(queries) - before).max(axis=1) <= 1e-2
    assert np.mean(close) >= 0.99
    # A head saved before, with a float32 database, still loads and answers alike.
    arrays = {"database": l2_normalize(X[:2500]), "labels": codes[:2500].astype(np.int64)}
    old = KNNHead.from_arrays({"k": 10}, head.classes_, arrays)
    np.testing.assert_array_equal(old.predict_proba(queries), head.predict_proba(queries))
    # A head saved as float16 codes loads back bit for bit.
    save_head(head, tmp_path / "knn", fingerprint=FINGERPRINT)
    loaded = load_head(tmp_path / "knn").head
    np.testing.assert_array_equal(loaded.database_, head.database_)
    np.testing.assert_array_equal(loaded.predict_proba(queries), head.predict_proba(queries))


@pytest.mark.parametrize("unknown", [False, True])
def test_scores_tallied_block_by_block_are_the_scores_of_whole_arrays(unknown: bool) -> None:
    from headstart.classify.metrics import score
    from headstart.classify.scoring import Tally

    rng = np.random.default_rng(4)
    head_classes = np.array(["ant", "bee", "cat", "dog"])
    val_classes = np.array(["ant", "bee", "cat", "dog", "eel"] if unknown else head_classes)
    codes = rng.integers(0, len(val_classes), size=500)
    proba = rng.dirichlet(np.ones(4), size=500).astype(np.float32)
    tally = Tally(head_classes, val_classes, 500, probabilistic=True)
    for start in range(0, 500, 128):
        tally.add(proba[start : start + 128], codes[start : start + 128])
    mine, theirs = tally.metrics(), score(val_classes[codes], proba, head_classes)
    assert (mine.log_loss is None) == unknown == (theirs.log_loss is None)
    for name in ("n", "accuracy", "balanced_accuracy", "macro_f1", "log_loss")[: 5 - unknown]:
        assert getattr(mine, name) == pytest.approx(getattr(theirs, name), rel=1e-5), name
