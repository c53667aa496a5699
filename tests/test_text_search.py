"""Search by text: ``headstart knn INDEX --text``, ``POST /v1/search`` and the page's text box,
over an index of a tiny random-initialised open_clip model (registered with
``open_clip.add_model_config``, as a user would). Random weights say nothing about quality:
these tests check that a text query is the index's search of the text's embedding, cached,
and refused where the model cannot embed text. The real-behaviour test trains a tiny CLIP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from helpers import FAST_ARGS, make_colour_folder, run_cli, serving_in_thread
from hypothesis import HealthCheck, given, settings
from playwright.sync_api import expect
from schemathesis import GenerationMode

from headstart.extract.text import encode_texts
from headstart.search.store import load_index
from headstart.serve.app import create_app
from headstart.serve.settings import ServeSettings

open_clip = pytest.importorskip("open_clip")

TINY = "hs-search-tiny-clip"
CLIP_ARGS = ["--model", f"open_clip:{TINY}", "--weights", "none", "--precision", "fp32"]
QUIET = ["--workers", "0", "-q"]
WAIT_MS = 60_000
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module", autouse=True)
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("search_configs")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 1,
        },
    }
    (directory / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(directory)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head and an index (with thumbnails) of the tiny model's embeddings."""
    root = tmp_path_factory.mktemp("text_search")
    make_colour_folder(root / "images", per_class=6)
    common = [*CLIP_ARGS, *QUIET, "--cache", root / "cache"]
    for verb, out in (("train", "head"), ("index build", "index")):
        result = run_cli(*verb.split(), root / "images", *common, "-o", root / out)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def server(workspace: Path):
    """The service on a uvicorn in a thread of this process, which knows the tiny config."""
    app = create_app(
        ServeSettings(
            head_dir=str(workspace / "head"), index_dir=str(workspace / "index"), device="cpu"
        )
    )
    with serving_in_thread(app) as url:
        yield url


def offline_search(workspace: Path, text: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_index(workspace / "index")
    vectors = encode_texts([text], loaded.fingerprint, workspace / "cache", device="cpu")
    similarities, rows = loaded.search(vectors, k)
    return similarities[0], rows[0]


def test_knn_by_text_is_the_index_search_of_the_cached_text_embedding(
    workspace: Path, text_encodes: list[list[str]]
) -> None:
    texts = ["a red circle", "something green"]
    args = ["knn", workspace / "index", "-k", "4", "--cache", workspace / "cache", "-q"]

    first = run_cli(*args, "--text", texts[0], "--text", texts[1])

    assert first.exit_code == 0, first.output
    assert text_encodes == [texts]  # both texts in one pass
    loaded = load_index(workspace / "index")
    lines = first.output.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == [f"text:{t}" for t in texts]
    shown = [line.split() for line in lines if line.startswith(" ")]
    assert len(shown) == 8
    for number, text in enumerate(texts):
        similarities, rows = offline_search(workspace, text, 4)
        mine = shown[4 * number : 4 * number + 4]
        assert [row[3] for row in mine] == [item.path for item in loaded.items.take(rows)]
        assert [row[2] for row in mine] == [item.label for item in loaded.items.take(rows)]
        assert [float(row[1]) for row in mine] == pytest.approx(similarities, abs=1e-4)

    again = run_cli(*args, "--text", texts[1])
    assert again.exit_code == 0 and again.output.splitlines()[1:] == lines[6:]
    assert text_encodes == [texts]  # read back from the cache: nothing encoded the second time

    # Images and texts in one call; a blank text is refused.
    query = sorted((workspace / "images" / "red").glob("*.jpg"))[0]
    both = run_cli(*args, query, "--text", texts[0])
    assert both.exit_code == 0 and f"text:{texts[0]}" in both.output and str(query) in both.output
    blank = run_cli(*args, "--text", "  ")
    assert blank.exit_code == 1 and "empty" in blank.output


def test_an_image_only_index_refuses_text_in_one_line(tmp_path: Path) -> None:
    make_colour_folder(tmp_path / "images", per_class=2)
    common = [*FAST_ARGS, *QUIET, "--cache", tmp_path / "cache"]
    built = run_cli("index", "build", tmp_path / "images", *common, "-o", tmp_path / "index")
    assert built.exit_code == 0, built.output

    refused = run_cli("knn", tmp_path / "index", "--text", "a dog on a beach", "-q")

    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        "Error: this index cannot be searched by text: torchvision:resnet18 is an image-only "
        "model (text needs --model open_clip:ARCH/TAG)"
    ]
    nothing = run_cli("knn", tmp_path / "index")
    assert nothing.exit_code == 1 and "--text" in nothing.output


def test_search_answers_the_index_search_of_the_text(
    server: str, workspace: Path, text_encodes: list[list[str]]
) -> None:
    info = httpx.get(f"{server}/v1/info").json()
    assert info["text"] is True and info["model"] == f"open_clip:{TINY}"

    answer = httpx.post(f"{server}/v1/search", json={"text": "a blue square", "k": 5})

    assert answer.status_code == 200, answer.text
    body = answer.json()
    similarities, rows = offline_search(workspace, "a blue square", 5)
    assert [n["id"] for n in body["neighbors"]] == rows.tolist()
    assert [n["similarity"] for n in body["neighbors"]] == pytest.approx(similarities, abs=1e-4)
    loaded = load_index(workspace / "index")
    first = body["neighbors"][0]
    item = loaded.items[first["id"]]
    assert first["label"] == item.label and first["key"] == item.key
    assert first["thumbnail"] == f"/v1/items/{first['id']}/thumbnail" and "path" not in first
    assert body["fingerprint"] == info["fingerprint"]
    # Ten neighbours by default; a repeated text is not encoded again.
    for _ in range(2):
        again = httpx.post(f"{server}/v1/search", json={"text": "new words"})
        assert len(again.json()["neighbors"]) == 10
    assert text_encodes.count(["new words"]) == 1


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"json": {"text": "   "}}, 422, "text is blank"),
        ({"json": {"text": ""}}, 422, "at least 1 character"),
        ({"json": {"text": "x" * 1001}}, 422, "at most 1000 characters"),
        ({"json": {"words": "a cat"}}, 422, "text: Field required"),
        ({"json": {"text": "a cat", "k": 0}}, 422, "k:"),
        ({"json": {"text": "a cat", "colour": "red"}}, 422, "colour"),
        ({"json": ["a cat"]}, 422, "valid dictionary"),
        ({"content": b'{"text": "\\ud800"}', "headers": JSON}, 422, "valid string"),
        ({"content": b"{not json", "headers": JSON}, 400, "not valid JSON"),
        ({}, 400, "empty request"),
        ({"content": b"a cat", "headers": {"content-type": "text/plain"}}, 415, "use JSON"),
    ],
)
def test_bad_searches_get_a_status_and_a_reason(
    server: str, request_kwargs: dict, status: int, message: str
) -> None:
    answer = httpx.post(f"{server}/v1/search", **request_kwargs)
    assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_search_keeps_its_documented_contract(server: str) -> None:
    """schemathesis's valid and invalid requests to /v1/search: valid ones answered, invalid
    ones refused with a documented status and body."""
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json").include(path="/v1/search")
    (operation,) = [found.ok() for found in schema.get_all_operations()]
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )

    @given(case=cases)
    @settings(
        max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
    )
    def keeps_its_contract(case) -> None:
        case.call_and_validate()

    keeps_its_contract()


def test_the_page_searches_by_text(server: str, page) -> None:
    page.goto(server)
    form = page.locator("#text-form")
    expect(form).to_be_visible(timeout=WAIT_MS)
    page.locator("#text").fill("a green triangle")
    page.locator("#text-form button").click()
    card = page.locator(".result.done")
    card.wait_for(timeout=WAIT_MS)

    wanted = httpx.post(f"{server}/v1/search", json={"text": "a green triangle", "k": 8}).json()
    assert card.locator(".name").inner_text() == "“a green triangle”"
    labels = card.locator(".neighbor-label").all_inner_texts()
    assert labels == [n["label"] for n in wanted["neighbors"]] and len(labels) == 8
    widths = page.eval_on_selector_all(
        ".neighbors img", "images => images.map(i => i.complete ? i.naturalWidth : -1)"
    )
    assert len(widths) == 8 and all(0 < w <= 96 for w in widths), widths
    shown = [float(s) for s in card.locator(".similarity").all_inner_texts()]
    assert shown == pytest.approx([n["similarity"] for n in wanted["neighbors"]], abs=1e-3)
    assert card.locator(".bars li").count() == 0 and card.locator(".preview").count() == 0
    assert page.problems == [], page.problems

    page.locator("#text").fill("   ")
    page.locator("#text-form button").click()
    error = page.locator(".result.failed .error")
    error.wait_for(timeout=WAIT_MS)
    assert error.inner_text() == "text is blank"


def test_a_trained_tiny_clip_finds_red_circles_by_text(tiny_clip, tmp_path: Path) -> None:
    """Real behaviour, offline: a tiny CLIP trained here on pictures of coloured shapes, loaded
    through --weights as a user's checkpoint, ranks red circles first for "a red circle"."""
    from tiny_clip import write_images

    tiny = tiny_clip
    write_images(tmp_path / "images", per_class=5, seed=1)  # held out: not the training pictures
    model = ["--model", f"open_clip:{tiny.config_name}", "--weights", tiny.checkpoint]
    common = [*model, "--precision", "fp32", *QUIET, "--cache", tmp_path / "cache"]
    index = tmp_path / "index"
    built = run_cli("index", "build", tmp_path / "images", *common, "-o", index)
    assert built.exit_code == 0, built.output

    found = run_cli(
        "knn", index, "--text", "a red circle", "-k", "5", "--cache", tmp_path / "cache"
    )

    assert found.exit_code == 0, found.output
    lines = found.output.splitlines()
    assert lines[0] == "text:a red circle" and len(lines) == 6
    # Each line ends with the item's path, .../<class folder>/NNN.png.
    folders = [re.search(r"([^/]+)/\d+\.png$", line).group(1) for line in lines[1:]]
    assert folders == ["red circle"] * 5, (folders, tiny.steps)
