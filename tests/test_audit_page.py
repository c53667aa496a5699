"""The audit page: ``headstart report --audit AUDIT.json`` and ``headstart audit --html``.

A small planted corpus (renamed copies across splits, the same bytes under two labels, a
re-encoded copy, and a tar shard holding renamed copies of training images) is audited; the page
must show each section with the findings' thumbnails, made from files and from tar members
alike, load in a real browser without an error, and keep the audit's ranking and counts.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from helpers import FAST_ARGS, make_colour_folder, run_cli
from PIL import Image

from headstart.report.audit_page import read_audit, render_audit
from headstart.report.thumbnails import split_member, thumbnails_of

HEADINGS = ["Exact duplicates", "Label conflicts", "Near-duplicates across sources"]
HEADINGS += ["Likely label errors"]
NEAR_LIMIT = 5


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("audit_page")
    train, val = root / "train", root / "val"
    make_colour_folder(train, per_class=12)
    make_colour_folder(val, per_class=6, start_seed=500)
    shutil.copyfile(train / "red" / "red_000.jpg", val / "red" / "holiday.jpg")
    shutil.copyfile(train / "green" / "green_001.jpg", val / "blue" / "green_or_blue.jpg")
    with Image.open(train / "green" / "green_005.jpg") as image:
        image.save(val / "green" / "reencoded.jpg", quality=60)
    # A shard of renamed copies of training images, labelled by .cls members.
    members = []
    for i, original in enumerate([train / "blue" / "blue_002.jpg", train / "red" / "red_007.jpg"]):
        members += [
            (f"part/{i:06d}.jpg", original.read_bytes()),
            (f"part/{i:06d}.cls", original.parent.name.encode()),
        ]
    shard = _shard(root / "extra.tar", members)
    out, page = root / "audit.json", root / "direct.html"
    result = run_cli(
        "audit", train, val, shard, *FAST_ARGS, "--cache", root / "cache", "--json", out,
        "--html", page, "--near-threshold", "0.0", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"root": root, "json": out, "direct": page, "shard": shard, "train": train}


def test_report_audit_renders_every_section_in_a_real_browser(audited, page, tmp_path) -> None:
    out = tmp_path / "audit.html"
    result = run_cli("report", "--audit", audited["json"], "-o", out, "--limit", NEAR_LIMIT)
    assert result.exit_code == 0, result.output
    assert "findings shown" in result.output
    document = json.loads(audited["json"].read_text())
    page.goto(out.as_uri())
    for heading in HEADINGS:
        assert page.get_by_role("heading", name=heading, exact=True).is_visible(), heading
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert images and all(complete and width > 0 for complete, width in images), images
    assert page.problems == [], page.problems
    assert page.inner_text("#count-exact b") == "4 (4 across sources)"
    assert page.inner_text("#count-near b") == str(len(document["near_duplicates"]["pairs"]))

    # Ranked and capped: near pairs as the JSON ranks them, the first NEAR_LIMIT, with the count.
    pairs = document["near_duplicates"]["pairs"]
    assert len(pairs) > NEAR_LIMIT
    shown = page.locator("#near-duplicates .finding")
    assert shown.count() == NEAR_LIMIT
    assert f"The first {NEAR_LIMIT} of {len(pairs)} pairs" in page.inner_text("#near-duplicates")
    for i in range(NEAR_LIMIT):
        finding = shown.nth(i)
        assert f"cosine {pairs[i]['similarity']:.4f}" in finding.inner_text()
        paths = finding.locator("figure").evaluate_all("fs => fs.map(f => f.dataset.path)")
        assert paths == [item["path"] for item in pairs[i]["items"]]
        assert finding.locator("figure img").count() == 2  # side by side, both pictured

    # Every exact group, its copies side by side: three in folders, two from the shard.
    groups = page.locator("#exact-duplicates .finding")
    assert groups.count() == len(document["exact_duplicates"]) == 4
    members = page.locator('#exact-duplicates figure[data-path*=".tar#"] img')
    assert members.count() == 2
    widths = members.evaluate_all("images => images.map(i => i.naturalWidth)")
    assert all(width > 0 for width in widths), widths

    # The conflict, and the conflicting copy as a likely label error: given vs suggested.
    conflict = page.locator("#label-conflicts .finding")
    assert conflict.count() == 1 and "blue vs green" in conflict.inner_text()
    issue = page.locator('#label-errors .finding:has(figure[data-path$="green_or_blue.jpg"])')
    assert "given: blue" in issue.inner_text() and "suggested: green" in issue.inner_text()
    errors = document["label_errors"]["issues"]
    assert page.locator("#label-errors .finding").count() == min(len(errors), NEAR_LIMIT)


def test_audit_html_writes_the_same_page(audited, page) -> None:
    page.goto(audited["direct"].as_uri())
    for heading in HEADINGS:
        assert page.get_by_role("heading", name=heading, exact=True).is_visible(), heading
    assert page.locator("#exact-duplicates .finding").count() == 4
    assert page.problems == [], page.problems


def test_an_image_gone_since_the_audit_is_shown_as_unavailable(audited, tmp_path) -> None:
    document = read_audit(audited["json"])
    document["exact_duplicates"][0]["items"][0]["path"] = str(tmp_path / "moved.jpg")
    html = render_audit(document, limit=3)
    section = html.split('id="exact-duplicates"')[1].split("</section>")[0]
    first, second = section.split("<figure")[1:3]
    assert "moved.jpg" in first and "image unavailable" in first and "<img" not in first
    assert "<img" in second and "image unavailable" not in second


def test_tar_members_are_found_by_name_and_read_once(audited) -> None:
    shard = str(audited["shard"])
    assert split_member(f"{shard}#part/000001.jpg") == (shard, "part/000001.jpg")
    assert split_member(str(audited["train"] / "red" / "red_000.jpg")) is None
    found = thumbnails_of([f"{shard}#part/000001.jpg", f"{shard}#part/missing.jpg"])
    assert found[f"{shard}#part/000001.jpg"][:2] == b"\xff\xd8"  # a JPEG
    assert found[f"{shard}#part/missing.jpg"] is None


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("not json", "cannot read"),
        ("other json", "is not the JSON of headstart audit"),
        ("damaged", "damaged"),
        ("both", "not both"),
        ("neither", "give HEAD_DIR"),
    ],
)
def test_bad_input_fails_in_one_line(audited, tmp_path, case, message) -> None:
    given, out = tmp_path / "a.json", tmp_path / "page.html"
    extra = []
    if case == "not json":
        given.write_text("{")
    elif case == "other json":
        given.write_text(json.dumps({"format": "headstart-head/1"}))
    elif case == "damaged":
        document = json.loads(audited["json"].read_text())
        del document["near_duplicates"]["pairs"][0]["items"]
        given.write_text(json.dumps(document))
    elif case == "both":
        given = audited["json"]
        extra = [tmp_path]
    audit = [] if case == "neither" else ["--audit", given]
    result = run_cli("report", *extra, *audit, "-o", out)
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists()


def test_the_near_heading_says_when_pairs_within_sources_were_searched(audited) -> None:
    document = read_audit(audited["json"])
    assert document["near_duplicates"]["within_sources"] is False
    document["near_duplicates"]["within_sources"] = True
    html = render_audit(document, limit=1)
    assert "<h2>Near-duplicates across and within sources</h2>" in html
