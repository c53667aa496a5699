"""Real servers on loopback for the object-storage tests and bench: moto's S3 server mode and a
plain HTTP server (``python -m http.server``). Nothing is mocked: headstart talks to them over
TCP through s3fs/aiohttp exactly as it would to AWS or a web server."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers import free_port

__all__ = ["HttpServer", "S3Server", "http_server", "s3_server"]


@dataclass
class S3Server:
    """A moto S3 server: its endpoint, and the environment that points boto and s3fs at it."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def upload_tree(self, bucket: str, prefix: str, root: Path) -> list[str]:
        """Every file under ``root`` as ``s3://bucket/prefix/RELATIVE``; the URLs, sorted."""
        client = self.client()
        urls = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            client.upload_file(str(path), bucket, key)
            urls.append(f"s3://{bucket}/{key}")
        return urls


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's server mode in its own thread, on a free loopback port."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO: thousands of lines per test otherwise.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@dataclass
class HttpServer:
    root: Path
    url: str


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[HttpServer]:
    """``python -m http.server`` serving ``root`` on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("http.server did not start") from None
                time.sleep(0.05)
        yield HttpServer(root, url)
    finally:
        process.terminate()
        process.wait(timeout=10)
