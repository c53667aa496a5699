"""``serve --workers 2``: two processes on one port, each with the index mapped from the same
file (its pages shared through the page cache), both answering."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import FAST_ARGS, free_port, make_colour_folder, run_cli, wait_until_ready
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    make_colour_folder(root / "images", per_class=4)
    common = [*FAST_ARGS, "--cache", root / "cache", "-q"]
    assert run_cli("train", root / "images", *common, "-o", root / "head").exit_code == 0
    assert run_cli("index", "build", root / "images", *common, "-o", root / "index").exit_code == 0
    return root


def _neighbors_answered(url: str) -> float:
    """The /v1/neighbors answers counted by whichever worker takes this connection."""
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "headstart_requests_total" and sample.labels == {
                "endpoint": "/v1/neighbors",
                "status": "200",
            }:
                return sample.value
    return 0.0


def _assert_same_neighbours(answer: dict, expected: dict, tolerance: float = 1e-4) -> None:
    """The same similarities, and the same items except where two items tie within the
    rounding (their order, or which of them makes the last place, may then differ)."""
    found = {n["id"]: n["similarity"] for n in answer["neighbors"]}
    wanted = {n["id"]: n["similarity"] for n in expected["neighbors"]}
    assert sorted(found.values()) == pytest.approx(sorted(wanted.values()), abs=tolerance)
    for item in found.keys() & wanted.keys():
        assert found[item] == pytest.approx(wanted[item], abs=tolerance)
    last = min(wanted.values())
    for item in found.keys() ^ wanted.keys():  # only ties at the last place may swap
        assert abs(found.get(item, wanted.get(item)) - last) <= tolerance, (answer, expected)


def test_two_workers_share_one_mapped_index_and_both_answer(trained: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "headstart", "serve", "--head", trained / "head",
               "--index", trained / "index", "--port", str(port), "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(
        [str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, lambda: process.poll() is None, process.communicate)
        index_file = str((trained / "index" / "index.faiss").resolve())

        def mapping() -> list[psutil.Process]:
            children = psutil.Process(process.pid).children(recursive=True)
            return [c for c in children if any(m.path == index_file for m in c.memory_maps())]

        # Each worker loads its engine on its own: wait until both have mapped the index.
        deadline = time.monotonic() + 180
        while len(mapping()) < 2:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
        assert len(mapping()) == 2
        while any(httpx.get(f"{url}/readyz").status_code != 200 for _ in range(20)):
            assert time.monotonic() < deadline
        image = sorted((trained / "images" / "red").glob("*.jpg"))[0].read_bytes()

        def ask(_: int) -> dict:
            answer = httpx.post(f"{url}/v1/neighbors", files=[("file", ("q.jpg", image))])
            assert answer.status_code == 200, answer.text
            return answer.json()

        # Which worker accepts a connection is the kernel's choice, and an idle service may hand
        # every one to the same worker: ask in concurrent rounds until both have answered.
        answers: list[dict] = []
        counts: set[float] = set()
        with ThreadPoolExecutor(8) as pool:
            while len(counts) < 2 or min(counts) == 0:
                assert time.monotonic() < deadline and len(answers) < 800, counts
                answers.extend(pool.map(ask, range(40)))
                counts = set(pool.map(lambda _: _neighbors_answered(url), range(40)))
        # One index, one answer, whichever worker: the same neighbours, and similarities equal
        # up to how a batch of concurrent requests rounds (the service batches them).
        for answer in answers:
            _assert_same_neighbours(answer, answers[0])
        # Each worker counts its own answers: two counts that add up to all of them.
        assert len(counts) == 2 and sum(counts) == len(answers), counts
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert os.environ.get("HEADSTART_SERVE_SETTINGS") is None  # set in the server, not here
