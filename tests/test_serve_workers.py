"""``serve --workers 2``: two processes on one port, each with the index mapped from the same
file (its pages shared through the page cache), both answering."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
        answers = []
        for _ in range(40):  # a fresh connection each: either worker may take it
            answer = httpx.post(f"{url}/v1/neighbors", files=[("file", ("q.jpg", image))])
            assert answer.status_code == 200, answer.text
            answers.append(answer.json())
        assert all(a == answers[0] for a in answers)  # one index, one answer, whichever worker
        # Each worker counts its own answers: two counts that add up to all of them.
        counts = {_neighbors_answered(url) for _ in range(60)}
        assert len(counts) == 2 and sum(counts) == 40 and min(counts) > 0, counts
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert os.environ.get("HEADSTART_SERVE_SETTINGS") is None  # set in the server, not here
