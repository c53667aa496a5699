"""The service's web page, used in a real browser (headless Chromium) against a real server."""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import FAST_ARGS, free_port, make_colour_folder, run_cli, wait_until_ready
from playwright.sync_api import expect

KEY = "page-key-42"
# Slow machines (2 cores under a full suite) get time; a working page answers in well under it.
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("page")
    make_colour_folder(root / "images", per_class=6)
    common = [*FAST_ARGS, "--cache", root / "cache", "-q"]
    assert run_cli("train", root / "images", *common, "-o", root / "head").exit_code == 0
    assert run_cli("index", "build", root / "images", *common, "-o", root / "index").exit_code == 0
    port = free_port()
    command = [
        sys.executable, "-m", "headstart", "serve", "--head", root / "head",
        "--index", root / "index", "--port", port, "--api-key-env", "PAGE_KEY",
    ]  # fmt: skip
    process = subprocess.Popen(
        [str(part) for part in command],
        env={**os.environ, "PAGE_KEY": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, lambda: process.poll() is None, lambda: "the server exited")
    yield url
    process.terminate()
    process.wait(timeout=30)


def open_with_key(page, url: str) -> None:
    page.goto(url)
    page.locator("#key").fill(KEY, timeout=WAIT_MS)
    page.locator("#key-form button").click()
    expect(page.locator("#head")).to_have_text("logreg", timeout=WAIT_MS)
    page.problems.clear()  # the 401 before the key was given


def loaded_images(page, selector: str) -> list[int]:
    """The natural widths of the images under ``selector``; 0 for one that failed to load."""
    return page.eval_on_selector_all(
        selector, "images => images.map(i => i.complete ? i.naturalWidth : -1)"
    )


def test_the_page_asks_for_the_key_once_then_shows_the_service(server: str, page) -> None:
    page.goto(server)
    page.locator("#key-form").wait_for(state="visible", timeout=WAIT_MS)
    # The browser logs the refused call made before the key was given, and nothing else.
    assert page.problems and all("401" in problem for problem in page.problems), page.problems
    open_with_key(page, server)
    assert page.locator("#key-form").is_hidden()
    assert page.inner_text("#classes") == "blue, green, red"
    assert page.inner_text("#index") == "18 items"
    assert "resnet18" in page.inner_text("#model")
    assert page.locator("#text-form").is_hidden()  # an image-only model: no search by text
    page.reload()  # kept for the tab: no second prompt
    expect(page.locator("#head")).to_have_text("logreg", timeout=WAIT_MS)
    assert page.locator("#key-form").is_hidden()
    assert page.problems == [], page.problems


def test_a_chosen_image_gets_class_bars_and_neighbour_thumbnails(
    server: str, page, tmp_path: Path
) -> None:
    make_colour_folder(tmp_path, per_class=1, start_seed=900)
    open_with_key(page, server)
    page.set_input_files("#files", str(tmp_path / "green" / "green_000.jpg"))
    page.locator(".result.done").wait_for(timeout=WAIT_MS)

    labels = page.locator(".bars .label").all_inner_texts()
    assert labels[0] == "green" and sorted(labels) == ["blue", "green", "red"]
    widths = page.eval_on_selector_all(
        ".bars .fill", "bars => bars.map(b => b.getBoundingClientRect().width)"
    )
    assert widths == sorted(widths, reverse=True) and widths[0] > 0
    values = [float(v.rstrip("%")) for v in page.locator(".bars .value").all_inner_texts()]
    assert abs(sum(values) - 100) < 0.5

    neighbour_labels = page.locator(".neighbors .neighbor-label").all_inner_texts()
    assert len(neighbour_labels) == 8 and neighbour_labels[0] == "green"
    widths = loaded_images(page, ".neighbors img")
    assert len(widths) == 8 and all(0 < w <= 96 for w in widths), widths
    similarities = [float(s) for s in page.locator(".neighbors .similarity").all_inner_texts()]
    assert similarities == sorted(similarities, reverse=True)
    assert page.problems == [], page.problems


def test_dropped_images_are_each_classified(server: str, page, tmp_path: Path) -> None:
    make_colour_folder(tmp_path, per_class=1, start_seed=950)
    open_with_key(page, server)
    names = ["red/red_000.jpg", "blue/blue_000.jpg"]
    payload = [
        {"name": Path(name).name, "bytes": list((tmp_path / name).read_bytes())} for name in names
    ]
    transfer = page.evaluate_handle(
        """files => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = new Uint8Array(f.bytes);
                transfer.items.add(new File([bytes], f.name, {type: "image/jpeg"}));
            }
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator(".result.done")).to_have_count(2, timeout=WAIT_MS)
    top = {
        card.locator(".name").inner_text(): card.locator(".bars .label").first.inner_text()
        for card in page.locator(".result").all()
    }
    assert top == {"red_000.jpg": "red", "blue_000.jpg": "blue"}


def test_a_damaged_image_shows_the_services_reason_in_the_page(
    server: str, page, tmp_path: Path
) -> None:
    damaged = tmp_path / "broken.jpg"
    damaged.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    open_with_key(page, server)
    page.set_input_files("#files", str(damaged))
    error = page.locator(".result.failed .error")
    error.wait_for(timeout=WAIT_MS)
    assert re.search(r"image 0 \(broken\.jpg\): .*(cannot|not an image)", error.inner_text())
    assert "{" not in error.inner_text()  # the message, not the raw JSON
    assert page.locator(".result.failed .bars li").count() == 0


def test_the_page_ships_with_the_package_and_loads_nothing_from_elsewhere(server: str) -> None:
    page_html = httpx.get(server)
    assert page_html.status_code == 200 and page_html.headers["content-type"].startswith(
        "text/html"
    )
    assert "default-src 'self'" in page_html.headers["content-security-policy"]
    for asset in ("/page/app.js", "/page/style.css"):
        answer = httpx.get(server + asset)
        assert answer.status_code == 200
        assert not re.search(r"https?://", answer.text), asset
    assert httpx.get(server + "/page/../app.py").status_code == 404
    # The page is for people; it is not part of the API contract.
    assert "/" not in httpx.get(server + "/openapi.json").json()["paths"]
