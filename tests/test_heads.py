import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from headstart.cache import Fingerprint
from headstart.classify.heads import get_head, list_heads
from headstart.classify.linear import LogisticRegressionHead, logistic_path
from headstart.classify.neighbors import KNNHead, knn_votes
from headstart.classify.persist import load_head, save_head
from headstart.classify.sweep import refit, sweep
from headstart.errors import HeadstartError

FINGERPRINT = Fingerprint({"model": "test"}, {"model": "resnet18", "weights": "none"})
# Heads fitted on labelled embeddings; zeroshot is built from class names by an image-text model
# instead (tests/test_zeroshot.py), and its fit refuses.
LEARNED = [name for name in list_heads() if get_head(name).learns_from_images]
BUILT = [name for name in list_heads() if name not in LEARNED]


def blobs(n: int = 600, d: int = 32, k: int = 4, spread: float = 0.6, seed: int = 0):
    """Gaussian classes around well separated centres, with string labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    y = rng.integers(0, k, size=n)
    X = (centres[y] + rng.normal(size=(n, d)) * spread).astype(np.float32)
    return X, np.array([f"class{i}" for i in y])


@pytest.mark.parametrize("name", LEARNED)
def test_every_head_learns_separable_embeddings(name: str) -> None:
    X, y = blobs(n=1000)
    X_test, y_test = X[600:], y[600:]
    params = {"epochs": 10} if name == "mlp" else {}
    head = get_head(name)(**params).fit(X[:600], y[:600])
    assert head.score(X_test, y_test) >= 0.97
    proba = head.predict_proba(X_test)
    assert proba.shape == (len(X_test), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-4)
    assert clone(head).get_params() == head.get_params()


# Every head fitted on embeddings keeps scikit-learn's whole estimator contract; no check is
# excused.
@parametrize_with_checks([get_head(name)() for name in LEARNED])
def test_every_head_passes_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("name", BUILT)
def test_heads_built_without_images_skip_the_estimator_checks(name: str) -> None:
    pytest.skip(
        f"{name} is built from class names by an image-text model, not fitted on (X, y), and "
        "every scikit-learn estimator check fits; tests/test_zeroshot.py checks it"
    )


def test_head_options_come_from_the_registry() -> None:
    """Each declared option reaches `train`, with the heads it applies to named in its help;
    a head registered later gets its option with no other edit."""
    script = (
        "from click.testing import CliRunner\n"
        "from headstart.classify.heads import HeadOption, register_head, head_options\n"
        "from headstart.classify.neighbors import NearestClassMeanHead\n"
        "from headstart.cli import main\n"
        "@register_head('toy')\n"
        "class Toy(NearestClassMeanHead):\n"
        "    options = (HeadOption('depth', int, 'Tree depth.', minimum=1),)\n"
        "    def __init__(self, *, depth=3, temperature=0.07):\n"
        "        self.depth, self.temperature = depth, temperature\n"
        "print(CliRunner().invoke(main, ['train', '--help']).output)\n"
        "for option, takers in head_options():\n"
        "    print(option.spelling, '/'.join(takers))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    help_text = " ".join(run.stdout.split())
    listed = help_text.split("--head TEXT ")[1].split(", or all")[0]
    assert sorted(listed.split(", ")) == sorted([*list_heads(), "toy"])
    assert "--depth INTEGER RANGE Tree depth. [toy]" in help_text
    assert "--temperature FLOAT RANGE Softmax temperature of cosines. [knn/ncm]" in help_text
    declared = dict(line.split(" ", 1) for line in run.stdout.splitlines()[-9:])
    assert declared == {
        "--C": "logreg/linear-svm",
        "--alpha": "ridge",
        "-k": "knn",
        "--vote": "knn",
        "--temperature": "knn/ncm",
        "--hidden": "mlp",
        "--epochs": "mlp",
        "--prompts": "zeroshot",
        "--depth": "toy",
    }


def test_heads_check_they_are_fitted_and_the_width() -> None:
    from sklearn.exceptions import NotFittedError

    X, y = blobs()
    with pytest.raises(NotFittedError):
        LogisticRegressionHead().predict(X)
    head = LogisticRegressionHead().fit(X, y)
    with pytest.raises(
        HeadstartError, match="X has 10 features, but LogisticRegressionHead is expecting 32"
    ):
        head.predict(X[:, :10])


@pytest.mark.parametrize("name", LEARNED)
def test_one_class_is_refused_by_its_name(name: str) -> None:
    X, _ = blobs(n=20)
    with pytest.raises(HeadstartError, match=r"at least two classes to train, got only: cat$"):
        get_head(name)().fit(X, np.array(["cat"] * 20))


@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_logreg_agrees_with_scikit_learn(C: float) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 48)).astype(np.float32)
    y = (X @ rng.normal(size=(48, 5)) + rng.normal(size=(2000, 5)) * 3).argmax(axis=1)
    ours = LogisticRegressionHead(C=C).fit(X, y)
    standardised = (X - X.mean(axis=0)) / X.std(axis=0)
    theirs = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(standardised, y)
    agreement = np.mean(ours.predict(X) == theirs.predict(standardised))
    assert agreement >= 0.99
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=2e-3)


def test_logistic_path_warm_starts_and_stops_when_validation_stops_improving() -> None:
    X, y = blobs(n=800, spread=4.0)
    points = list(logistic_path(X[:600], y[:600], X[600:], y[600:], np.logspace(-6, 4, 11)))
    accuracies = [p.val_accuracy for p in points]
    best = int(np.argmax(accuracies))
    assert len(points) < 11 and len(points) - 1 - best == 2  # stopped 2 after the best
    assert [p.C for p in points] == sorted(p.C for p in points)


def test_knn_vote_matches_a_hand_computed_example() -> None:
    similarities = np.array([[0.9, 0.8, 0.1]], dtype=np.float32)
    labels = np.array([[1, 0, 0]])
    majority = knn_votes(similarities, labels, 2, vote="majority", temperature=0.07)
    np.testing.assert_allclose(majority, [[2 / 3, 1 / 3]], rtol=1e-6)
    weighted = knn_votes(similarities, labels, 2, vote="weighted", temperature=0.1)
    w = np.exp(np.array([0.9, 0.8, 0.1]) / 0.1)
    expected = np.array([w[1] + w[2], w[0]]) / w.sum()
    np.testing.assert_allclose(weighted, [expected], rtol=1e-5)
    assert weighted.argmax() == 1 and majority.argmax() == 0


def test_sweep_leaderboard_and_refit() -> None:
    X, y = blobs(n=500, spread=2.5)
    rows = sweep(["logreg", "ridge", "knn", "ncm"], X[:300], y[:300], X[300:], y[300:])
    assert {row.head_name for row in rows} == {"logreg", "ridge", "knn", "ncm"}
    assert {row.value for row in rows if row.head_name == "knn"} == {10, 20, 100, 200}
    best = max(rows, key=lambda r: r.metrics.accuracy)
    final = refit(best, X, y)
    assert final.get_params() == best.estimator.get_params() and final.score(X, y) >= 0.9


def test_saved_head_predicts_identically_in_a_fresh_process(tmp_path: Path) -> None:
    X, y = blobs()
    for name in LEARNED:
        params = {"epochs": 3} if name == "mlp" else {}
        head = get_head(name)(**params).fit(X, y)
        save_head(head, tmp_path / name, fingerprint=FINGERPRINT, metrics={"accuracy": 1.0})
        np.save(tmp_path / f"{name}-expected.npy", head.predict_proba(X))
    np.save(tmp_path / "X.npy", X)
    script = (
        "import sys, numpy as np\n"
        "from headstart.classify.persist import load_head\n"
        "root = sys.argv[1]\n"
        "X = np.load(root + '/X.npy')\n"
        "for name in sys.argv[2:]:\n"
        "    proba = load_head(root + '/' + name).head.predict_proba(X)\n"
        "    assert np.array_equal(proba, np.load(root + f'/{name}-expected.npy')), name\n"
        "print('identical')\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path), *LEARNED],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0 and "identical" in run.stdout, run.stderr


def test_tampered_or_mismatched_heads_are_refused(tmp_path: Path) -> None:
    X, y = blobs()
    save_head(LogisticRegressionHead().fit(X, y), tmp_path / "h", fingerprint=FINGERPRINT)
    assert load_head(tmp_path / "h", fingerprint=FINGERPRINT.id).head.n_features_in_ == 32

    with pytest.raises(HeadstartError, match="trained on embeddings"):
        load_head(tmp_path / "h", fingerprint="0123456789abcdef")

    arrays = tmp_path / "h" / "arrays.npz"
    original = arrays.read_bytes()
    arrays.write_bytes(original[:-10] + b"0123456789")
    with pytest.raises(HeadstartError, match="altered or damaged"):
        load_head(tmp_path / "h")
    arrays.write_bytes(original)

    document = tmp_path / "h" / "head.json"
    record = json.loads(document.read_text())
    record["params"]["__class__"] = "os.system"
    document.write_text(json.dumps(record))
    with pytest.raises(HeadstartError, match="unexpected hyper-parameters"):
        load_head(tmp_path / "h")
    record["params"].pop("__class__")
    record["classes"] = record["classes"][:2]
    document.write_text(json.dumps(record))
    with pytest.raises(HeadstartError, match=r"do not fit|not a usable"):
        load_head(tmp_path / "h")
    with pytest.raises(HeadstartError, match="not a saved head"):
        load_head(tmp_path)


def test_knn_head_round_trips_its_database(tmp_path: Path) -> None:
    X, y = blobs()
    head = KNNHead(k=5).fit(X, y)
    save_head(head, tmp_path / "knn", fingerprint=FINGERPRINT)
    loaded = load_head(tmp_path / "knn").head
    np.testing.assert_array_equal(loaded.database_, head.database_)
    assert loaded.get_params() == head.get_params()


def test_log_loss_reads_each_column_as_its_class_in_any_order() -> None:
    # Classes named by index, as the fine-tuning loop names them: as strings '10' sorts before
    # '2', which must not change which column is which class.
    from sklearn.metrics import log_loss

    from headstart.classify.metrics import score

    rng = np.random.default_rng(0)
    classes = np.arange(12)
    y = rng.integers(0, 12, size=200)
    proba = rng.dirichlet(np.ones(12), size=200)
    expected = log_loss(y, proba, labels=classes)
    assert score(y, proba, classes).log_loss == pytest.approx(expected, rel=1e-5)
    shuffled = rng.permutation(12)  # the same probabilities, columns in another class order
    assert score(y, proba[:, shuffled], classes[shuffled]).log_loss == pytest.approx(
        expected, rel=1e-5
    )
