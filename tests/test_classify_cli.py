"""End to end from image folders: extract, train, evaluate, predict, index and knn."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST_ARGS, make_colour_folder, write_image

from headstart.cache import EmbeddingCache
from headstart.classify.persist import load_head
from headstart.cli import main
from headstart.errors import HeadstartError


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("classify")
    make_colour_folder(root / "train", per_class=12)
    make_colour_folder(root / "test", per_class=5, start_seed=500)
    return root


def test_train_evaluate_predict(workspace: Path) -> None:
    cache, head = workspace / "cache", workspace / "head"
    trained = run(
        "train",
        workspace / "train",
        *FAST_ARGS,
        "--cache",
        cache,
        "--head",
        "logreg",
        "--head",
        "knn",
        "--sweep",
        "--plot",
        "-o",
        head,
        "-q",
    )
    assert trained.exit_code == 0, trained.output
    assert "logreg" in trained.output and "k=200" not in trained.output  # k > train size skipped
    assert "refit on train+validation" in trained.output
    assert {p.name for p in head.iterdir()} >= {
        "head.json",
        "arrays.npz",
        "confusion.png",
        "embedding_map.png",
    }
    document = json.loads((head / "head.json").read_text())
    assert document["fingerprint"]["id"] == EmbeddingCache(cache).open().fingerprint.id
    assert document["metrics"]["accuracy"] >= 0.9

    metrics = workspace / "metrics.json"
    evaluated = run("evaluate", head, workspace / "test", "--cache", cache, "--json", metrics, "-q")
    assert evaluated.exit_code == 0, evaluated.output
    document = json.loads(metrics.read_text())
    assert document["accuracy"] >= 0.9 and document["n"] == 15 and document["missing"] == 0
    assert "blue" in evaluated.output

    predicted = run(
        "predict",
        head,
        workspace / "test" / "red",
        "--cache",
        cache,
        "--format",
        "jsonl",
        "--top-k",
        "2",
        "-q",
    )
    rows = [json.loads(line) for line in predicted.output.splitlines()]
    assert len(rows) == 5 and len(rows[0]["top"]) == 2
    assert sum(row["label"] == "red" for row in rows) >= 4


def test_index_and_knn(workspace: Path) -> None:
    cache, index = workspace / "cache", workspace / "index"
    built = run(
        "index", "build", workspace / "train", *FAST_ARGS, "--cache", cache, "-o", index, "-q"
    )
    assert built.exit_code == 0, built.output
    assert "flat (exact), recall@10 1.000" in built.output

    query = workspace / "test" / "green" / "green_000.jpg"
    found = run("knn", index, query, "-k", "3", "--cache", cache, "-q")
    lines = found.output.splitlines()
    assert lines[0].endswith("green_000.jpg") and len(lines) == 4
    assert all(" green " in line for line in lines[1:])

    key = (
        EmbeddingCache(cache)
        .open()
        .resolve_keys([str(workspace / "train" / "red" / "red_000.jpg")])[0]
    )
    by_key = run("knn", index, "--key", key, "-k", "1", "--cache", cache)
    assert "1.0000" in by_key.output and "red_000.jpg" in by_key.output


def test_near_duplicates_are_listed(workspace: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(workspace / "train" / "blue", images / "blue")
    shutil.copy(images / "blue" / "blue_000.jpg", images / "blue" / "again.jpg")
    cache = workspace / "cache"
    assert (
        run(
            "index", "build", images, *FAST_ARGS, "--cache", cache, "-o", tmp_path / "i", "-q"
        ).exit_code
        == 0
    )
    listing = run("knn", tmp_path / "i", "--duplicates", "0.9999")
    pairs = [line.split("\t") for line in listing.stdout.splitlines()]
    assert any({Path(a).name, Path(b).name} == {"again.jpg", "blue_000.jpg"} for _, a, b in pairs)


def test_training_input_errors_are_clear(workspace: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely"
    shutil.copytree(workspace / "train" / "red", lonely / "red")
    write_image(lonely / "green" / "only.jpg", 1)
    result = CliRunner().invoke(
        main, ["train", str(lonely), *FAST_ARGS, "--cache", str(workspace / "cache"), "-q"]
    )
    assert result.exit_code == 1 and "at least 2 images" in result.output

    loose = tmp_path / "loose"
    for i in range(4):
        write_image(loose / f"{i}.jpg", i)
    result = CliRunner().invoke(
        main, ["train", str(loose), *FAST_ARGS, "--cache", str(workspace / "cache"), "-q"]
    )
    assert result.exit_code == 1 and "needs labels" in result.output

    result = CliRunner().invoke(
        main,
        [
            "train",
            str(workspace / "train"),
            *FAST_ARGS,
            "--head",
            "forest",
            "--cache",
            str(workspace / "cache"),
        ],
    )
    assert result.exit_code == 1 and "unknown head 'forest'" in result.output


def test_a_head_and_an_index_from_other_model_code_say_what_differs(tmp_path: Path) -> None:
    """After a one-line edit of the user's model file, the refusal names the code hash rather
    than printing two descriptions that read the same."""
    from helpers import TINY_MODELS

    from headstart.serve.engine import check_artifacts

    make_colour_folder(tmp_path / "images", per_class=4)
    model_file = tmp_path / "models.py"
    shutil.copy(TINY_MODELS, model_file)
    model = ["--model", f"{model_file}:tiny_features", "--weights", "none", "--resize", "32"]
    common = [*model, "--crop", "32", "--precision", "fp32", "--cache", tmp_path / "cache", "-q"]
    head, index = tmp_path / "head", tmp_path / "index"
    trained = run("train", tmp_path / "images", *common, "--head", "ncm", "-o", head)
    assert trained.exit_code == 0, trained.output
    model_file.write_text(model_file.read_text() + "\n# a comment: new code hash\n")
    built = run("index", "build", tmp_path / "images", *common, "-o", index)
    assert built.exit_code == 0, built.output

    with pytest.raises(HeadstartError) as refused:
        check_artifacts(head, index)
    differences = str(refused.value).split("(index vs head: ")[1].split("); build")[0]
    assert differences.startswith("model_code: sha256:") and " vs sha256:" in differences
    assert ";" not in differences  # nothing else differs


def test_a_sweep_without_refit_keeps_validation_unseen(workspace: Path) -> None:
    cache = workspace / "cache"
    heads = {}
    for flag in ("--refit", "--no-refit"):
        out = workspace / f"head{flag}"
        args = ["train", workspace / "train", *FAST_ARGS, "--cache", cache, "--sweep", flag]
        trained = run(*args, "-o", out, "-q")
        assert trained.exit_code == 0, trained.output
        heads[flag] = load_head(out)
    refitted, kept = heads["--refit"], heads["--no-refit"]
    assert refitted.document["notes"]["refit_on_train_and_validation"] is True
    assert kept.document["notes"]["refit_on_train_and_validation"] is False
    # The same C chosen, fitted on different rows: only the refit saw the validation images.
    assert refitted.head.get_params()["C"] == kept.head.get_params()["C"]
    assert not np.allclose(refitted.head.coef_, kept.head.coef_)
