"""``headstart report``: one self-contained HTML page whose numbers are the head's real answers.

A head is trained on random-noise images under a random-init backbone, so it makes plenty of
mistakes to show; its labels come from a manifest and include markup (``<b>x</b>``), which the
page must show as text. The numbers on the page are checked against scikit-learn on the
predictions ``headstart predict`` gives for the same images.
"""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST_ARGS, make_folder, write_image
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from headstart.cli import main
from headstart.report.figures import draw
from headstart.report.gather import (
    MAX_MAP_POINTS,
    MAX_MISTAKES,
    ReportData,
    Target,
    summarise_predictions,
)
from headstart.report.html import render

# Folder name -> the label the manifests give it: markup, an ampersand and quotes.
LABELS = {"x": "<b>x</b>", "amp": "salt & pepper", "quote": 'it\'s "quoted"'}


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_manifest(path: Path, images: list[Path]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for image in images:
            writer.writerow([str(image), LABELS[image.parent.name]])
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    train = make_folder(root / "train", {name: 12 for name in LABELS})
    test = make_folder(root / "test", {name: 10 for name in LABELS}, start_seed=500)
    paths = {
        "root": root,
        "cache": root / "cache",
        "head": root / "head",
        "train": write_manifest(root / "train.csv", train),
        "test": write_manifest(root / "test.csv", test),
        "report": root / "report.html",
    }
    trained = run(
        "train",
        paths["train"],
        *FAST_ARGS,
        "--cache",
        paths["cache"],
        "--head",
        "logreg",
        "--head",
        "ncm",
        "--sweep",
        "--plot",
        "-o",
        paths["head"],
        "-q",
    )
    assert trained.exit_code == 0, trained.output
    paths["train_output"] = trained.output
    reported = run(
        "report", paths["head"], paths["test"], "--cache", paths["cache"], "-o", paths["report"]
    )
    assert reported.exit_code == 0, reported.output
    paths["report_output"] = reported.output
    predicted = run(
        "predict", paths["head"], paths["test"], "--cache", paths["cache"], "--format", "jsonl"
    )
    assert predicted.exit_code == 0, predicted.output
    paths["predictions"] = {
        row["path"]: row for row in map(json.loads, predicted.output.splitlines())
    }
    paths["truth"] = {str(image): LABELS[image.parent.name] for image in test}
    return paths


class _Tables(HTMLParser):
    """Every table's rows as lists of cell texts, by the table's id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


_FIGURE = re.compile(r'<figure class="mistake" data-path="([^"]*)">(.*?)</figure>', re.S)


def gallery(page: str) -> list[dict]:
    shown = []
    for path, body in _FIGURE.findall(page):
        shown.append(
            {
                "path": html.unescape(path),
                "true": html.unescape(re.search(r'class="true">true: (.*?)</div>', body)[1]),
                "predicted": html.unescape(
                    re.search(r'class="predicted">predicted: (.*?)</div>', body)[1]
                ),
                "confidence": float(
                    re.search(r"<div>(?:confidence|score) ([0-9.]+)</div>", body)[1]
                ),
                "image": "<img" in body,
            }
        )
    return shown


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "url(" not in page
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)


def test_train_with_plot_points_to_the_report(trained) -> None:
    last = trained["train_output"].splitlines()[-1]
    assert last.startswith(f"see it: headstart report {trained['head']} ")
    # The chosen head was refit on its validation split: the user names held-out images.
    assert "TEST_SOURCE" in last and f"--cache {trained['cache']}" in last


def test_the_report_is_one_self_contained_file(trained) -> None:
    page = trained["report"].read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "Content-Security-Policy" in page  # the browser itself refuses anything else
    assert "30 images evaluated" in trained["report_output"]
    leftovers = [p.name for p in trained["root"].iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers  # written atomically


def test_numbers_match_sklearn_on_the_same_predictions(trained) -> None:
    page = trained["report"].read_text(encoding="utf-8")
    predictions, truth = trained["predictions"], trained["truth"]
    paths = sorted(truth)
    y_true = [truth[p] for p in paths]
    y_pred = [predictions[p]["label"] for p in paths]
    classes = json.loads((trained["head"] / "head.json").read_text())["classes"]

    matrix = tables(page)["confusion-matrix"]
    assert matrix[0][1:] == classes  # columns: predicted
    assert [row[0] for row in matrix[1:]] == classes  # rows: true
    shown = np.array([[int(cell) for cell in row[1:]] for row in matrix[1:]])
    expected = confusion_matrix(y_true, y_pred, labels=classes)
    np.testing.assert_array_equal(shown, expected)
    assert 0 < np.trace(expected) < len(paths)  # both right and wrong answers are checked

    accuracy = re.search(r'id="metric-accuracy">accuracy<b>([0-9.]+)</b>', page)[1]
    assert float(accuracy) == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-4)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    per_class = tables(page)["per-class-table"][1:]
    assert [row[0] for row in per_class] == classes
    for row, p, r, f, s in zip(per_class, precision, recall, f1, support, strict=True):
        assert [float(v) for v in row[1:4]] == pytest.approx([p, r, f], abs=5e-4)
        assert int(row[4]) == s


def test_the_gallery_shows_only_real_mistakes_most_confident_first(trained) -> None:
    page = trained["report"].read_text(encoding="utf-8")
    predictions, truth = trained["predictions"], trained["truth"]
    wrong = {p for p in truth if predictions[p]["label"] != truth[p]}
    shown = gallery(page)
    assert len(shown) == min(len(wrong), MAX_MISTAKES) > 0
    for item in shown:
        assert item["path"] in wrong
        assert item["true"] == truth[item["path"]]
        assert item["predicted"] == predictions[item["path"]]["label"] != item["true"]
        assert item["confidence"] == pytest.approx(
            predictions[item["path"]]["top"][0]["p"], abs=1e-3
        )
        assert item["image"]  # every one of these files is readable
    confidences = [item["confidence"] for item in shown]
    assert confidences == sorted(confidences, reverse=True)
    left_out = [predictions[p]["top"][0]["p"] for p in wrong - {i["path"] for i in shown}]
    assert all(p <= confidences[-1] + 1e-3 for p in left_out)
    assert page.count("data:image/jpeg") == len(shown)  # thumbnails only for what is shown


def test_labels_and_paths_are_escaped(trained) -> None:
    page = trained["report"].read_text(encoding="utf-8")
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "salt &amp; pepper" in page and "it&#x27;s &quot;quoted&quot;" in page


def test_the_sweep_leaderboard_is_shown_with_the_saved_row(trained) -> None:
    page = trained["report"].read_text(encoding="utf-8")
    notes = json.loads((trained["head"] / "head.json").read_text())["notes"]
    rows = tables(page)["leaderboard-table"][1:]
    assert len(rows) == len(notes["leaderboard"]) > 2
    saved = [row for row in rows if row[0].endswith("(saved)")]
    chosen = notes["leaderboard"][notes["leaderboard_chosen"]]
    assert len(saved) == 1 and saved[0][0] == f"{chosen['head']} (saved)"
    assert float(saved[0][3]) == pytest.approx(chosen["accuracy"], abs=1e-4)


def test_without_sources_the_report_shows_what_the_head_recorded(trained, tmp_path) -> None:
    out = tmp_path / "head-only.html"
    result = run("report", trained["head"], "-o", out)
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert_self_contained_or_no_images(page)
    assert set(tables(page)) == {"leaderboard-table"}  # no evaluation, so no other table
    assert "No labelled SOURCES were given" in page


def assert_self_contained_or_no_images(page: str) -> None:
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert all(s.startswith("data:") for s in re.findall(r'\bsrc="([^"]*)"', page))


def test_size_stays_bounded_for_many_images(tmp_path: Path) -> None:
    # 10,000 predictions over 40 classes, as an evaluation on a large test set would give;
    # their paths cycle over a few real files, so every gallery thumbnail is really made.
    rng = np.random.default_rng(0)
    n, k = 10_000, 40
    files = [str(write_image(tmp_path / f"{i}.jpg", i, size=(400, 300))) for i in range(30)]
    classes = np.array([f"class {i:02d}" for i in range(k)])  # sorted, as heads keep them
    labels = classes[rng.integers(0, k, n)]
    proba = rng.dirichlet(np.ones(k) * 0.3, n)
    X = rng.normal(size=(n, 64)).astype(np.float32)
    evaluated = summarise_predictions(
        labels, proba, classes, [files[i % len(files)] for i in range(n)], X
    )
    assert len(evaluated.mistakes) == MAX_MISTAKES and evaluated.n_mistakes > 9000
    assert len(evaluated.map_vectors) == MAX_MAP_POINTS
    data = ReportData(Target(tmp_path, "head", tmp_path), None, [], [], {}, evaluated)
    page = render(data, draw(data, projection="pca"))
    assert_self_contained(page)
    images = re.findall(r'src="data:image/(\w+);', page)
    # The gallery's thumbnails, the map, and the confusion matrix as a picture: past 30
    # classes a table of numbers is unreadable, and it would grow with the square of them.
    assert images.count("jpeg") == MAX_MISTAKES and images.count("png") == 2
    assert set(tables(page)) == {"confused-pairs", "per-class-table"}
    assert len(page.encode()) < 1_000_000, len(page.encode())


def test_true_classes_the_head_never_saw_are_counted_as_errors() -> None:
    evaluated = summarise_predictions(
        np.array(["a", "b", "c"]),
        np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]),
        np.array(["a", "b"]),
        ["1.jpg", "2.jpg", "3.jpg"],
        np.eye(3),
    )
    assert evaluated.classes == ["a", "b", "c"]
    assert evaluated.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert evaluated.unknown == {"c": 1} and evaluated.metrics.accuracy == pytest.approx(2 / 3)
    assert [m.path for m in evaluated.mistakes] == ["3.jpg"]


@pytest.fixture(scope="module")
def finetuned(trained) -> dict:
    run_dir = trained["root"] / "run"
    result = run(
        "finetune",
        trained["train"],
        "--val",
        trained["test"],
        *FAST_ARGS,
        "--cache",
        trained["cache"],
        "--epochs",
        "2",
        "--batch-size",
        "12",
        "-j",
        "0",
        "--augment",
        "none",
        "--patience",
        "0",
        "-q",
        "-o",
        run_dir,
    )
    assert result.exit_code == 0, result.output
    return {"run": run_dir, "output": result.output}


def test_finetune_points_to_the_report(trained, finetuned) -> None:
    last = finetuned["output"].splitlines()[-1]
    assert last == (
        f"see it: headstart report {finetuned['run']} {trained['test']} "
        f"--cache {trained['cache']} -o {finetuned['run']}/report.html"
    )


def test_a_finetune_run_shows_its_learning_curves(trained, finetuned, tmp_path) -> None:
    out = tmp_path / "run.html"
    result = run(
        "report", finetuned["run"], trained["test"], "--cache", trained["cache"], "-o", out
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    history = [
        json.loads(line) for line in (finetuned["run"] / "metrics.jsonl").read_text().splitlines()
    ]
    epochs = tables(page)["epochs"][1:]
    assert [int(row[0]) for row in epochs] == [r["epoch"] for r in history] == [0, 1, 2]
    assert [float(row[3]) for row in epochs] == pytest.approx(
        [r["val_accuracy"] for r in history], abs=1e-4
    )
    assert 'alt="loss and validation accuracy per epoch"' in page
    # Evaluated with the fine-tuned head, on the fine-tuned embeddings.
    assert "confusion-matrix" in tables(page)


def test_an_unfinished_run_shows_its_curves_but_has_no_head_to_evaluate(
    trained, finetuned, tmp_path
) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_bytes((finetuned["run"] / "metrics.jsonl").read_bytes())
    out = tmp_path / "unfinished.html"
    result = run("report", unfinished, "-o", out)
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert "epochs" in tables(page) and "no fine-tuned head to evaluate" in page
    refused = run("report", unfinished, trained["test"], "-o", tmp_path / "no.html")
    assert refused.exit_code == 1 and "has no fine-tuned head yet" in refused.output
    assert not (tmp_path / "no.html").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing head", "is not a directory"),
        ("not a head", "holds neither a saved head"),
        ("nothing embeddable", "could be embedded"),
        ("unlabelled", "report needs labels"),
        ("no such output folder", "no directory"),
        ("output is a folder", "is a directory"),
    ],
)
def test_bad_input_fails_in_one_line(trained, tmp_path: Path, case, message) -> None:
    head, source, out = trained["head"], trained["test"], tmp_path / "report.html"
    if case == "missing head":
        head = tmp_path / "nowhere"
    elif case == "not a head":
        head = tmp_path
    elif case == "nothing embeddable":
        source = tmp_path / "broken"
        (source / "a").mkdir(parents=True)
        (source / "a" / "text.jpg").write_text("not an image\n")
    elif case == "unlabelled":
        source = next((trained["root"] / "test" / "x").iterdir())
    elif case == "no such output folder":
        out = tmp_path / "missing" / "report.html"
    elif case == "output is a folder":
        out = tmp_path
    result = run("report", head, source, "--cache", trained["cache"], "-o", out, "-q")
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not list(tmp_path.glob("*.html"))


def test_help_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from headstart.cli import main\n"
        "assert CliRunner().invoke(main, ['report', '--help']).exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


def test_the_report_renders_in_a_real_browser(trained, finetuned, page, tmp_path) -> None:
    run_report = tmp_path / "run.html"
    result = run("report", finetuned["run"], "-o", run_report)
    assert result.exit_code == 0, result.output
    for report, headings in (
        (
            trained["report"],
            [
                "Evaluation",
                "Leaderboard (validation, as trained)",
                "Confusion matrix",
                "Per class",
                "Most confident mistakes",
                "Embedding map",
            ],
        ),
        (run_report, ["The head", "Fine-tuning run"]),
    ):
        page.goto(report.as_uri())
        assert page.locator("h1").is_visible()
        for heading in headings:
            assert page.get_by_role("heading", name=heading, exact=True).is_visible(), heading
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert images and all(complete and width > 0 for complete, width in images), images
        assert page.problems == [], page.problems
    # The markup in a label is text on the page, never an element.
    page.goto(trained["report"].as_uri())
    assert "<b>x</b>" in page.locator("#confusion-matrix").inner_text()
    assert page.evaluate("document.querySelectorAll('main table b').length") == 0
