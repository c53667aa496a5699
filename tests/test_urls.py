"""Tables of URLs: images downloaded from real servers on loopback, keyed by content, every
fault (timeout, redirect loop, a body past the cap, 404, 5xx, not an image) in the ledger."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import SMALL_FP32, TINY_MODELS, free_port, published_shards, write_image
from PIL import Image

from headstart.cache import EmbeddingCache
from headstart.cli import main
from headstart.extract.download import Downloader, DownloadError, DownloadLimits
from headstart.extract.labelled import iter_labelled

TINY = ["--model", f"{TINY_MODELS}:tiny_features", *SMALL_FP32, "-q"]


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def image_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@contextlib.contextmanager
def file_server(root: Path, log: Path | None = None) -> Iterator[str]:
    """``python -m http.server`` serving ``root`` on a free loopback port, once it answers;
    its request log (one line a request) goes to ``log``."""
    port = free_port()
    with open(log or os.devnull, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "http.server stopped"
            try:
                httpx.get(url + "/")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


class FaultHandler(http.server.BaseHTTPRequestHandler):
    """Each path a kind of server a crawl meets. HTTP/1.0: a body ends when the connection
    closes, so ``/huge`` needs no Content-Length."""

    server: FaultServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # http.server's name
        path = self.path.split("?", 1)[0]
        self.server.count(path)
        if path.startswith("/held/"):
            # Counted while held only: once the body is written the client may take its next
            # request before this handler returns, and that is within the cap.
            with self.server.in_flight():
                time.sleep(0.3)
            return self._send(200, image_bytes(int(path.rsplit("/", 1)[1])))
        with self.server.in_flight():
            if path.startswith("/ok/"):
                return self._send(200, image_bytes(int(path.rsplit("/", 1)[1])))
            if path == "/loop/a":
                return self._redirect("/loop/b")
            if path == "/loop/b":
                return self._redirect("/loop/a")
            if path == "/hop":
                return self._redirect("/ok/7")
            if path == "/huge":
                return self._huge()
            if path == "/slow":
                return self._slow()
            if path == "/trickle":
                return self._trickle()
            if path == "/flaky":
                if self.server.hits[path] == 1:
                    return self._send(500, b"try again")
                return self._send(200, image_bytes(8))
            if path == "/text":
                return self._send(200, b"<html>not an image</html>", "text/html")
            return self._send(404, b"no such image")

    def _send(self, status: int, body: bytes, kind: str = "image/png") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("Location", where)
        self.end_headers()

    def _huge(self) -> None:
        # Streamed 1 MB at a time, never held: 8 GB if the client read it all.
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        block = b"\0" * (1 << 20)
        with contextlib.suppress(OSError):
            for _ in range(8192):
                self.wfile.write(block)
                self.server.huge_sent += len(block)

    def _slow(self) -> None:
        # Headers at once, then nothing for 8 s: past a read timeout of 2 s.
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.flush()
        time.sleep(8)
        with contextlib.suppress(OSError):
            self.wfile.write(image_bytes(9))

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(40):  # a byte every 0.1 s: 4 s for the whole image
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(0.1)


class FaultServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.hits: dict[str, int] = {}
        self.huge_sent = 0
        self.now = 0
        self.most = 0
        self._lock = threading.Lock()

    def count(self, path: str) -> None:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


@pytest.fixture
def faults() -> Iterator[tuple[FaultServer, str]]:
    server = FaultServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_urls_embed_keyed_by_content_and_a_rerun_downloads_nothing(
    tmp_path: Path, forward_count: list[int]
) -> None:
    served = tmp_path / "served"
    for seed in range(5):
        write_image(served / "img" / f"{seed}.jpg", seed)
    local = tmp_path / "local"
    write_image(local / "3.jpg", 3)  # the bytes of img/3.jpg, as a local file
    cache = tmp_path / "cache"
    table = tmp_path / "urls.jsonl"
    with file_server(served) as url:
        rows = [
            {"url": f"{url}/img/{seed}.jpg", "label": "ab"[seed % 2], "caption": f"c{seed}"}
            for seed in range(5)
        ]
        table.write_text("".join(json.dumps(row) + "\n" for row in rows))
        result = run("extract", local, table, *TINY, "-j", "0", "--cache", cache)
        assert result.exit_code == 0, result.output
        assert "listed 6 · embedded 5 · from cache 1 · failed 0" in result.output
    assert forward_count[0] == 5

    with EmbeddingCache(cache).catalog() as catalog:
        listed = [row for block in iter_labelled([str(table)], catalog) for row in block]
        known = catalog.lookup_urls([row["url"] for row in rows])
    assert [r.name for r in listed] == [row["url"] for row in rows]
    assert [(r.label, r.caption) for r in listed] == [(r["label"], r["caption"]) for r in rows]
    store = EmbeddingCache(cache).open()
    assert listed[3].key == store.resolve_keys([str(local / "3.jpg")])[0]
    assert known == {r.name: r.key for r in listed}

    # The server is gone: a rerun that downloaded anything would fail.
    rerun = run("extract", table, *TINY, "--cache", cache)
    assert rerun.exit_code == 0, rerun.output
    assert "listed 5 · embedded 0 · from cache 5 · failed 0" in rerun.output

    # The clip-retrieval export names each downloaded image by its URL, with its label and
    # caption; the local copy of img/3.jpg is a file, with no URL.
    out = tmp_path / "export"
    exported = run("export", cache, "--format", "clip-retrieval", "--out", out)
    assert exported.exit_code == 0, exported.output
    metadata = pq.read_table(out / "metadata" / "metadata_0000.parquet").to_pylist()
    by_url = {m["url"]: m for m in metadata if m["url"] is not None}
    assert sorted(by_url) == sorted(row["url"] for row in rows)
    for row in rows:
        exported_row = by_url[row["url"]]
        assert exported_row["image_path"] == row["url"]
        assert (exported_row["label"], exported_row["caption"]) == (row["label"], row["caption"])
    assert {m["key"] for m in metadata} == {r.key for r in listed}


def test_a_table_served_over_http_names_images_relative_to_it(tmp_path: Path) -> None:
    served = tmp_path / "served"
    for seed in range(4):
        write_image(served / "img" / f"{seed}.jpg", seed)
    rows = [{"path": f"img/{seed}.jpg", "label": "xy"[seed % 2]} for seed in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), served / "t.parquet", row_group_size=2)
    cache = tmp_path / "cache"
    with file_server(served) as url:
        result = run("extract", f"{url}/t.parquet", *TINY, "-j", "0", "--cache", cache)
        assert result.exit_code == 0, result.output
        assert "listed 4 · embedded 4 · from cache 0 · failed 0" in result.output
        with EmbeddingCache(cache).catalog() as catalog:
            blocks = iter_labelled([f"{url}/t.parquet"], catalog)
            listed = [row for block in blocks for row in block]
    assert [(r.name, r.label) for r in listed] == [
        (f"{url}/img/{i}.jpg", "xy"[i % 2]) for i in range(4)
    ]


def test_every_download_fault_is_in_the_ledger_and_the_run_goes_on(
    tmp_path: Path, faults: tuple[FaultServer, str]
) -> None:
    server, url = faults
    paths = ["/ok/1", "/ok/2", "/hop", "/flaky", "/loop/a", "/huge", "/slow", "/trickle"]
    paths += ["/gone", "/text"]
    table = tmp_path / "t.csv"
    table.write_text("url,label\n" + "".join(f"{url}{p},x\n" for p in paths))
    cache = tmp_path / "cache"
    # The trickle sends a byte every 0.1 s for 4 s: never late by the read timeout, too late
    # by the deadline.
    args = ("--url-timeout", "2", "--url-deadline", "3", "--url-max-bytes", "1M", "-j", "0")
    args += ("--cache", cache)
    result = run("extract", table, *TINY, *args)
    assert result.exit_code == 3, result.output
    assert "listed 10 · embedded 4 · from cache 0 · failed 6" in result.output

    with EmbeddingCache(cache).catalog() as catalog:
        reasons = {f.path.removeprefix(url): f.reason for f in catalog.iter_failures()}
    assert set(reasons) == {"/loop/a", "/huge", "/slow", "/trickle", "/gone", "/text"}
    assert reasons["/loop/a"].startswith("redirect loop")
    assert reasons["/huge"].startswith("too large: more than 1048576 bytes")
    assert reasons["/slow"].startswith("timed out")
    assert reasons["/trickle"].startswith("too slow"), reasons["/trickle"]
    assert reasons["/gone"] == "HTTP 404"
    assert "/text" in reasons and "HTTP" not in reasons["/text"]  # arrived, did not decode
    assert server.hits["/flaky"] == 2  # a 500, then the retry's 200
    # The 8 GB body was cut off: what the server managed to send before the client hung up
    # is a few blocks past the cap (socket buffers), nowhere near the whole.
    assert server.huge_sent < 256 << 20

    # Failed URLs are not tried again unless asked; then they fail again, and say so.
    hits = dict(server.hits)
    again = run("extract", table, *TINY, *args)
    assert again.exit_code == 3 and "embedded 0 · from cache 4 · failed 6" in again.output
    assert server.hits == hits
    retried = run("extract", table, *TINY, *args, "--retry-failed")
    assert retried.exit_code == 3 and "failed 6" in retried.output
    assert server.hits["/gone"] == 2


def test_downloads_keep_to_the_cap_per_host(faults: tuple[FaultServer, str]) -> None:
    server, url = faults
    limits = DownloadLimits(per_host=2, threads=8)
    with Downloader(limits) as downloader:
        results = list(downloader.map(range(8), lambda i: downloader.fetch(f"{url}/held/{i}")))
    assert sorted(i for i, _ in results) == list(range(8))
    assert all(isinstance(data, bytes) and data == image_bytes(i) for i, data in results)
    assert server.most == 2


def test_a_server_that_trickles_meets_the_deadline(faults: tuple[FaultServer, str]) -> None:
    _, url = faults
    limits = DownloadLimits(read_timeout=2, deadline=0.5, retries=0)
    with Downloader(limits) as downloader, pytest.raises(DownloadError, match="too slow"):
        downloader.fetch(f"{url}/trickle")
    limits = DownloadLimits(max_redirects=0)
    with Downloader(limits) as downloader, pytest.raises(DownloadError, match="0 redirects"):
        downloader.fetch(f"{url}/hop")


def test_connection_errors_are_retried_then_recorded() -> None:
    port = free_port()  # nothing listens there
    limits = DownloadLimits(retries=2, backoff=0.01)
    with Downloader(limits) as downloader, pytest.raises(DownloadError) as error:
        downloader.fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert str(error.value).startswith("connection error") and "after 3 tries" in str(error.value)


@pytest.mark.parametrize("url", ["http://[bad/x.jpg", "nosuch://x/y.jpg", "http:///x.jpg"])
def test_a_malformed_url_is_a_failure_with_its_reason(url: str) -> None:
    with Downloader(DownloadLimits(retries=0)) as downloader, pytest.raises(DownloadError):
        downloader.fetch(url)


def test_sigkill_mid_table_then_the_rerun_downloads_and_embeds_only_what_is_missing(
    tmp_path: Path,
) -> None:
    served = tmp_path / "served"
    for seed in range(40):
        write_image(served / "img" / f"{seed}.jpg", seed)
    cache, log = tmp_path / "cache", tmp_path / "requests.log"
    slow = ["--model", f"{TINY_MODELS}:slow_features", *SMALL_FP32, "-q", "--workers", "1"]

    def gets() -> int:
        return log.read_text().count('"GET /img/')

    with file_server(served, log) as url:
        table = tmp_path / "t.jsonl"
        table.write_text(
            "".join(json.dumps({"url": f"{url}/img/{i}.jpg"}) + "\n" for i in range(40))
        )
        command = [sys.executable, "-m", "headstart", "extract", str(table), *slow]
        process = subprocess.Popen(
            [*command, "--batch-size", "4", "--shard-size", "8", "--cache", str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while len(published_shards(cache)) < 2:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no shard was published"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        partial = len(EmbeddingCache(cache).open())
        assert 16 <= partial < 40
        time.sleep(0.5)  # requests the killed run had made are logged by now
        before = gets()

        rerun = subprocess.run(
            [*command, "--cache", str(cache)], capture_output=True, text=True, timeout=240
        )
        assert rerun.returncode == 0, rerun.stderr
        expected = f"listed 40 · embedded {40 - partial} · from cache {partial} · failed 0"
        assert expected in rerun.stdout
        assert gets() - before == 40 - partial  # what was embedded is not downloaded again


def test_decoding_processes_share_a_url_table(tmp_path: Path) -> None:
    served = tmp_path / "served"
    for seed in range(40):
        write_image(served / "img" / f"{seed}.jpg", seed)
    table = tmp_path / "t.csv"
    cache = tmp_path / "cache"
    with file_server(served) as url:
        table.write_text("url,label\n" + "".join(f"{url}/img/{i}.jpg,{i % 4}\n" for i in range(40)))
        result = run("extract", table, *TINY, "-j", "2", "--cache", cache)
        assert result.exit_code == 0, result.output
        assert "listed 40 · embedded 40 · from cache 0 · failed 0" in result.output
    with EmbeddingCache(cache).catalog() as catalog:
        listed = [row for block in iter_labelled([str(table)], catalog) for row in block]
    assert [(r.name, r.label) for r in listed] == [
        (f"{url}/img/{i}.jpg", str(i % 4)) for i in range(40)
    ]
    assert len({r.key for r in listed}) == 40
