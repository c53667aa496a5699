"""``evaluate`` and ``report`` say which evaluation images the head was trained on.

A head is trained on noise images (folder A, validated on folder V); the evaluation folder holds
renamed copies of some of A's images, a renamed copy of a validation image and new images. The
copies of training images must be counted, whatever their names, and the figures on the rest
must be those of the head's own predictions on the rest (checked against scikit-learn on what
``predict`` gives).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_ARGS, make_folder, run_cli
from sklearn.metrics import accuracy_score, f1_score

from headstart.atomic import write_text_atomic
from headstart.cache.keys import file_key
from headstart.classify.overlap import key_prefixes, matched_in
from headstart.classify.persist import load_head, training_key_prefixes

CLASSES = ("x", "y", "z")
COPIED = 6  # training images copied, renamed, into the evaluation folder


@pytest.fixture(scope="module")
def leaked(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("overlap")
    train = make_folder(root / "A", {name: 10 for name in CLASSES})
    val = make_folder(root / "V", {name: 4 for name in CLASSES}, start_seed=300)
    fresh = make_folder(root / "E", {name: 5 for name in CLASSES}, start_seed=700)
    copies = []
    for i, original in enumerate(train[::5][:COPIED]):
        copy = root / "E" / original.parent.name / f"IMG_{i:04d}.jpg"
        shutil.copyfile(original, copy)
        copies.append(copy)
    # A copy of a validation image: the head chose on it but never fitted on it.
    shutil.copyfile(val[0], root / "E" / val[0].parent.name / "from_validation.jpg")
    cache, head = root / "cache", root / "head"
    trained = run_cli(
        "train", root / "A", "--val", root / "V", *FAST_ARGS, "--cache", cache,
        "--head", "logreg", "-o", head, "-q",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    return {
        "root": root, "cache": cache, "head": head, "train": train, "copies": copies,
        "fresh": fresh, "eval": root / "E",
    }  # fmt: skip


def _evaluate(leaked: dict, head: Path, out: Path):
    result = run_cli(
        "evaluate", head, leaked["eval"], "--cache", leaked["cache"], "--json", out, "-q"
    )
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def test_the_head_records_its_training_images_compactly(leaked: dict) -> None:
    loaded = load_head(leaked["head"])
    prefixes = training_key_prefixes(loaded)
    assert prefixes is not None and prefixes.dtype == np.uint64
    assert len(prefixes) == len(leaked["train"]) and np.all(np.diff(prefixes) > 0)
    keys = np.array([file_key(str(p)) for p in leaked["train"]], dtype="S64")
    assert matched_in(keys, prefixes).all()
    assert np.array_equal(np.sort(key_prefixes(keys)), prefixes)
    # Loading the head itself never reads them (a service holds none).
    assert loaded.head.predict_proba(np.zeros((1, loaded.head.n_features_in_))).shape == (1, 3)


def test_evaluate_counts_renamed_copies_and_scores_the_rest(leaked: dict, tmp_path) -> None:
    output, document = _evaluate(leaked, leaked["head"], tmp_path / "e.json")
    overlap = document["training_overlap"]
    total = len(leaked["fresh"]) + COPIED + 1
    assert overlap["known"] and overlap["matched"] == COPIED and overlap["total"] == total
    assert {Path(p).name for p in overlap["examples"]} == {p.name for p in leaked["copies"]}
    assert f"warning: {COPIED} of {total} images were in the head's training data" in output

    predicted = run_cli(
        "predict", leaked["head"], leaked["eval"], "--cache", leaked["cache"], "--format", "jsonl"
    )
    rows = [json.loads(line) for line in predicted.output.splitlines()]
    copied = {str(p) for p in leaked["copies"]}
    rest = [r for r in rows if r["path"] not in copied]
    truth = [Path(r["path"]).parent.name for r in rest]
    guess = [r["label"] for r in rest]
    assert overlap["rest"]["n"] == len(rest) == total - COPIED
    assert overlap["rest"]["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert overlap["rest"]["macro_f1"] == pytest.approx(
        f1_score(truth, guess, average="macro", zero_division=0)
    )
    assert f"\n  on the other {len(rest)}: accuracy {overlap['rest']['accuracy']:.4f}" in output
    # All images are still scored as before, beside the split.
    assert document["n"] == total


def _as_saved_before(head: Path, to: Path) -> Path:
    """The head as saved before training images were recorded: arrays and document alike."""
    shutil.copytree(head, to)
    with np.load(to / "arrays.npz", allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files if k != "_training_key_prefixes"}
    assert len(arrays) < len(np.load(head / "arrays.npz").files)
    np.savez(to / "arrays.npz", **arrays)
    document = json.loads((to / "head.json").read_text())
    del document["training_images"]
    document["arrays_sha256"] = file_key(str(to / "arrays.npz"))
    write_text_atomic(to / "head.json", json.dumps(document))
    return to


def test_a_head_saved_before_still_evaluates_and_says_overlap_is_unknown(
    leaked: dict, tmp_path
) -> None:
    old = _as_saved_before(leaked["head"], tmp_path / "old")
    assert training_key_prefixes(load_head(old)) is None
    output, document = _evaluate(leaked, old, tmp_path / "e.json")
    assert document["training_overlap"]["known"] is False
    assert document["training_overlap"]["matched"] == 0
    assert "in the head's training data is unknown" in output
    _, current = _evaluate(leaked, leaked["head"], tmp_path / "now.json")
    assert document["accuracy"] == current["accuracy"]


def test_a_refit_records_validation_images_too(leaked: dict, tmp_path) -> None:
    root = leaked["root"]
    refit = run_cli(
        "train", root / "A", "--val", root / "V", *FAST_ARGS, "--cache", leaked["cache"],
        "--head", "ncm", "--sweep", "-o", tmp_path / "refit", "-q",
    )  # fmt: skip
    assert refit.exit_code == 0 and "refit on train+validation" in refit.output, refit.output
    _, document = _evaluate(leaked, tmp_path / "refit", tmp_path / "e.json")
    assert document["training_overlap"]["matched"] == COPIED + 1


def test_the_report_warns_at_the_top(leaked: dict, page, tmp_path) -> None:
    out = tmp_path / "report.html"
    result = run_cli(
        "report", leaked["head"], leaked["eval"], "--cache", leaked["cache"], "-o", out, "-q",
        "--map", "pca",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    page.goto(out.as_uri())
    warning = page.locator("#training-overlap")
    assert warning.is_visible()
    total = len(leaked["fresh"]) + COPIED + 1
    text = warning.inner_text()
    assert f"{COPIED} of {total} evaluated images were in the head's training data" in text
    assert f"On the other {total - COPIED} images" in text
    # First on the page after the title lines: before the evaluation's own figures.
    first = page.evaluate("document.querySelector('main > :nth-child(3)').id")
    assert first == "training-overlap"
    assert page.problems == [], page.problems

    old = _as_saved_before(leaked["head"], tmp_path / "old")
    result = run_cli(
        "report", old, leaked["eval"], "--cache", leaked["cache"], "-o", out, "-q", "--map", "pca"
    )
    assert result.exit_code == 0, result.output
    page.goto(out.as_uri())
    assert "Unknown whether" in page.locator("#training-overlap").inner_text()
