"""``headstart audit`` on a small planted corpus: copies across splits (renamed), the same
bytes under two labels, a re-encoded copy, a mislabelled image, an unlabelled source and a
class too small for cross-validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_ARGS, make_colour_folder, run_cli, write_image
from PIL import Image

from headstart.audit.duplicates import exact_duplicates, key_prefixes
from headstart.audit.sources import AuditSource
from headstart.classify.data import Embedded


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("audit")
    train, val, loose = root / "train", root / "val", root / "loose"
    make_colour_folder(train, per_class=12)
    make_colour_folder(val, per_class=6, start_seed=500)
    # Too few for 5 folds: named and left out of the label-error search.
    for i in range(2):
        write_image(train / "rare" / f"rare_{i}.jpg", seed=900 + i)
    planted = {
        # Renamed copies of training images in validation: the leak the audit must find.
        "copies": [
            (train / "red" / "red_000.jpg", val / "red" / "holiday.jpg"),
            (train / "blue" / "blue_003.jpg", val / "blue" / "IMG_0001.jpg"),
        ],
        # The same bytes under another label.
        "conflict": (train / "green" / "green_001.jpg", val / "blue" / "green_or_blue.jpg"),
    }
    for original, copy in [*planted["copies"], planted["conflict"]]:
        shutil.copyfile(original, copy)
    # A near-copy: re-encoded at quality 60 (other bytes, the same picture).
    with Image.open(train / "green" / "green_005.jpg") as image:
        image.save(val / "green" / "reencoded.jpg", quality=60)
    planted["near"] = (train / "green" / "green_005.jpg", val / "green" / "reencoded.jpg")
    # An unlabelled source (files directly in the folder) holding a copy of a training image.
    loose.mkdir()
    shutil.copyfile(train / "red" / "red_004.jpg", loose / "found.jpg")
    write_image(loose / "other.jpg", seed=950)
    planted["loose_copy"] = (train / "red" / "red_004.jpg", loose / "found.jpg")
    return {"root": root, "train": train, "val": val, "loose": loose, **planted}


def _audit(corpus: dict, *sources: Path, **options: object):
    out = corpus["root"] / f"audit-{len(list(corpus['root'].glob('audit-*.json')))}.json"
    # A value of None is a flag.
    extra = [
        a
        for name, value in options.items()
        for a in ((f"--{name}",) if value is None else (f"--{name}", value))
    ]
    result = run_cli(
        "audit", *sources, *FAST_ARGS, "--cache", corpus["root"] / "cache", "--json", out,
        "-q", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def _paths(group: dict) -> set[str]:
    return {item["path"] for item in group["items"]}


def test_planted_copies_conflicts_and_classes_too_small(corpus: dict) -> None:
    output, found = _audit(corpus, corpus["train"], corpus["val"], limit=3)
    assert [s["name"] for s in found["sources"]] == [str(corpus["train"]), str(corpus["val"])]
    groups = [_paths(g) for g in found["exact_duplicates"]]
    # Every planted copy is found (recall 100%), paired with its original, and nothing else is.
    planted = [*corpus["copies"], corpus["conflict"]]
    for original, copy in planted:
        assert {str(original), str(copy)} in groups
    assert len(groups) == len(planted)
    for group in found["exact_duplicates"]:
        assert group["sources"] == [str(corpus["train"]), str(corpus["val"])]
    # The same bytes under two labels.
    conflicts = found["label_conflicts"]
    assert len(conflicts) == 1
    assert conflicts[0]["labels"] == ["blue", "green"]
    assert _paths(conflicts[0]) == {str(p) for p in corpus["conflict"]}
    # The class of two images is named and left out; everything else was searched.
    labels = found["label_errors"]
    assert labels["needs"] is None
    assert labels["skipped_classes"] == {"rare": 2}
    assert labels["searched"] == 3 * 12 + 3 * 6 + 4  # the colour classes and the planted files
    assert all(issue["label"] != "rare" for issue in labels["issues"])
    # The conflicting copy in "blue" is green: a label error the held-out heads see.
    flagged = {issue["path"]: issue for issue in labels["issues"]}
    assert str(corpus["conflict"][1]) in flagged
    assert flagged[str(corpus["conflict"][1])]["suggested"] == "green"
    # Printed: a summary line per kind, the top of each list, and the skipped class.
    assert "exact duplicates: 3 groups (3 across sources, 3 extra copies)" in output
    assert "label conflicts (the same bytes under different labels): 1" in output
    assert "blue vs green" in output
    assert "left out: rare (2)" in output
    assert str(corpus["copies"][0][1]) in output


def test_near_copy_ranked_and_exact_copies_not_repeated(corpus: dict) -> None:
    # A random-init backbone ranks well enough for one re-encoded copy among noisy colours.
    _, found = _audit(corpus, corpus["train"], corpus["val"], **{"near-threshold": 0.0})
    pairs = found["near_duplicates"]["pairs"]
    assert found["near_duplicates"]["threshold"] == 0.0
    similarities = [p["similarity"] for p in pairs]
    assert similarities == sorted(similarities, reverse=True)
    exact = {frozenset(_paths(g)) for g in found["exact_duplicates"]}
    assert not exact & {frozenset(_paths(p)) for p in pairs}
    near = {str(p) for p in corpus["near"]}
    best_for_copy = next(p for p in pairs if str(corpus["near"][1]) in _paths(p))
    assert _paths(best_for_copy) == near


def test_unlabelled_source_gets_duplicates_and_label_findings_say_they_need_labels(
    corpus: dict,
) -> None:
    output, found = _audit(corpus, corpus["loose"])
    assert found["label_errors"]["needs"].startswith("labels")
    assert found["label_errors"]["issues"] == []
    assert found["near_duplicates"]["needs"] == "two or more sources"
    assert "likely label errors: not searched; this needs labels" in output
    # Beside a labelled source: the copy is found, and the labelled images are still searched.
    output, found = _audit(corpus, corpus["train"], corpus["loose"])
    assert {str(p) for p in corpus["loose_copy"]} in [_paths(g) for g in found["exact_duplicates"]]
    assert found["label_errors"]["needs"] is None
    assert found["label_errors"]["unlabelled"] == 2
    assert found["label_conflicts"] == []  # an unlabelled copy conflicts with nothing
    assert found["sources"][1] == {"name": str(corpus["loose"]), "images": 2, "labelled": False}


def test_an_unlabelled_source_gets_its_near_copies_ranked(corpus: dict, tmp_path: Path) -> None:
    """Near-duplicates need no labels: a re-encoded copy in a folder of loose files is paired
    with its original in the training set, while the label search leaves the loose files out."""
    loose = tmp_path / "loose"
    loose.mkdir()
    original = corpus["train"] / "blue" / "blue_007.jpg"
    with Image.open(original) as image:
        image.save(loose / "from_a_phone.jpg", quality=60)
    write_image(loose / "unrelated.jpg", seed=960)
    output, found = _audit(corpus, corpus["train"], loose, **{"near-threshold": 0.0})
    pairs = found["near_duplicates"]["pairs"]
    best = next(p for p in pairs if str(loose / "from_a_phone.jpg") in _paths(p))
    assert _paths(best) == {str(original), str(loose / "from_a_phone.jpg")}
    assert found["label_errors"]["unlabelled"] == 2
    assert "2 images without a label, left out" in output


def test_audit_reads_what_train_embedded(tmp_path: Path, forward_count: list[int]) -> None:
    """The audit embeds only what the cache lacks: after train over the same folder, nothing."""
    make_colour_folder(tmp_path / "data", per_class=6)
    cache, head = tmp_path / "cache", tmp_path / "head"
    trained = run_cli("train", tmp_path / "data", *FAST_ARGS, "--cache", cache, "-o", head, "-q")
    assert trained.exit_code == 0, trained.output
    embedded = forward_count[0]
    assert embedded == 18
    audited = run_cli("audit", tmp_path / "data", *FAST_ARGS, "--cache", cache, "-q")
    assert audited.exit_code == 0, audited.output
    assert forward_count[0] == embedded
    write_image(tmp_path / "data" / "red" / "late.jpg", seed=990)
    again = run_cli("audit", tmp_path / "data", *FAST_ARGS, "--cache", cache, "-q")
    assert again.exit_code == 0, again.output
    assert forward_count[0] == embedded + 1


def test_too_few_images_everywhere_is_said_not_fatal(corpus: dict) -> None:
    output, found = _audit(corpus, corpus["val"], folds=10)
    labels = found["label_errors"]
    assert labels["skipped_classes"] == {"blue": 8, "green": 7, "red": 7}
    assert labels["needs"].startswith("at least two classes with 10 or more")
    assert "classes with fewer than 10 images, left out: blue (8), green (7), red (7)" in output


def test_unknown_source_is_one_line_and_exit_1(corpus: dict, tmp_path: Path) -> None:
    result = run_cli("audit", tmp_path / "nowhere", *FAST_ARGS, "--cache", tmp_path / "c")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "source not found" in result.output


def _source(name: str, keys: list[str], labels: list[str | None]) -> AuditSource:
    paths = [f"{name}/{i}.jpg" for i in range(len(keys))]
    data = Embedded(np.array(labels, dtype=object), paths, np.array(keys, "S64"), None, None)
    return AuditSource(name, data)


def test_exact_groups_compare_full_keys_after_the_prefix() -> None:
    same_prefix = "0123456789abcdef"
    a, b = same_prefix + "0" * 48, same_prefix + "f" * 48
    c = "f" * 64
    train = _source("train", [a, c, b], ["x", "y", "x"])
    test = _source("test", [b, c], [None, "z"])
    groups = exact_duplicates([train, test])
    assert [(g.key, [(i.source, i.path) for i in g.items]) for g in groups] == [
        (b, [("train", "train/2.jpg"), ("test", "test/0.jpg")]),
        (c, [("train", "train/1.jpg"), ("test", "test/1.jpg")]),
    ]
    assert [g.conflicting for g in groups] == [False, True]
    assert key_prefixes(np.array([c, a], "S64")).tolist() == [2**64 - 1, 0x0123456789ABCDEF]


def test_help_imports_neither_the_cache_nor_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from headstart.cli import main\n"
        "try: main(['audit', '--help'])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'h5py', 'faiss') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--near-threshold FLOAT RANGE" in done.stdout
    assert "[default: 0.9;" in done.stdout
    assert done.stdout.strip().endswith("[]")


def test_inverted_file_finds_what_the_exact_search_finds(corpus: dict) -> None:
    from headstart.audit.near import near_duplicates
    from headstart.audit.settings import NearSearch
    from headstart.audit.sources import embed_audit_sources
    from headstart.extract import ExtractOptions, PreprocessOverrides

    options = ExtractOptions(
        model="resnet18",
        weights="none",
        preprocess=PreprocessOverrides(40, 32),
        precision="fp32",
        device="cpu",
    )
    sources = embed_audit_sources(
        [str(corpus["train"]), str(corpus["val"])], options, corpus["root"] / "cache"
    )
    flat = near_duplicates(sources, NearSearch(0.5, flat_max_rows=10**9, gpu=False))
    ivf = near_duplicates(sources, NearSearch(0.5, flat_max_rows=0, gpu=False))

    def pairs(found):
        return {frozenset((p.first.path, p.second.path)) for p in found}

    assert pairs(ivf) <= pairs(flat)
    assert frozenset(str(p) for p in corpus["near"]) in pairs(ivf)
    assert len(pairs(ivf)) >= 0.5 * len(pairs(flat))


def test_summary_shows_a_few_copies_of_a_large_group_and_json_has_all() -> None:
    from headstart.audit.findings import AuditFindings, ExactGroup, Item, LabelFindings
    from headstart.audit.report import findings_to_dict, summary_lines

    items = tuple(Item("data", f"/nowhere/data/{i}.jpg", None) for i in range(50))
    group = ExactGroup("a" * 64, items)
    findings = AuditFindings(
        sources={"data": 50},
        exact=[group],
        conflicts=[],
        near=None,
        near_threshold=0.9,
        labels=LabelFindings(needs="labels"),
    )
    lines = summary_lines(findings, limit=5)
    assert (
        lines[2]
        == "  50 copies: "
        + "  ".join(f"data/{i}.jpg" for i in range(4)).replace("data/", "/nowhere/data/")
        + "  and 46 more"
    )
    assert len(findings_to_dict(findings)["exact_duplicates"][0]["items"]) == 50


def test_near_copies_within_a_source_when_asked(corpus: dict) -> None:
    single = corpus["root"] / "single"
    shutil.copytree(corpus["train"] / "green", single / "green")
    shutil.copytree(corpus["train"] / "red", single / "red")
    with Image.open(single / "red" / "red_002.jpg") as image:
        image.save(single / "red" / "red_002_q60.jpg", quality=60)
    shutil.copyfile(single / "red" / "red_003.jpg", single / "red" / "again.jpg")
    output, found = _audit(corpus, single)
    assert found["near_duplicates"]["needs"] == "two or more sources"
    assert "near-duplicates across sources: need two or more sources" in output

    output, found = _audit(corpus, single, **{"near-threshold": 0.0, "near-within": None})
    near = found["near_duplicates"]
    assert near["needs"] is None and near["within_sources"] is True
    pairs = [frozenset(_paths(p)) for p in near["pairs"]]
    assert all(len(pair) == 2 for pair in pairs)  # never an image with itself
    assert len(set(pairs)) == len(pairs)  # each pair once, though found from both ends
    exact = frozenset(str(single / "red" / name) for name in ("red_003.jpg", "again.jpg"))
    assert exact not in pairs  # the same bytes: an exact duplicate, listed there
    assert exact in [frozenset(_paths(g)) for g in found["exact_duplicates"]]
    copy = str(single / "red" / "red_002_q60.jpg")
    best = next(p for p in near["pairs"] if copy in _paths(p))
    assert _paths(best) == {copy, str(single / "red" / "red_002.jpg")}
    assert "near-duplicates across and within sources (cosine >= 0)" in output
