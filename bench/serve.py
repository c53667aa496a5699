"""Serving throughput: ``headstart serve`` with micro-batching on and off, side by side.

A resnet18 head (random weights: speed does not depend on them) is trained on a few images,
then the server is started twice on a loopback port, once with ``--max-batch 32 --max-wait-ms 5``
and once with ``--max-batch 1`` (each request its own forward pass). A bounded load generator
(httpx async: a fixed number of single-image classify requests, then it stops) measures the
latency of one client (p50, p99) and the throughput at 1, 8 and 32 concurrent clients.

It also times the backbone alone at batch 1 and at batch 32 (the server's own forward path, on
decoded images): batching cannot gain much more than that ratio where the model's forward pass
is the bottleneck, as it is on a CPU whose cores batch 1 already keeps busy.

    python bench/serve.py [--data DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from headstart.serve.engine import load_engine

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
LEVELS = {1: 48, 8: 96, 32: 192}  # concurrent clients -> requests sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(head: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "headstart",
        "serve",
        "--head",
        str(head),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        "5",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready")


async def load(
    url: str, images: list[bytes], clients: int, requests: int
) -> tuple[float, list[float]]:
    """``requests`` classify calls from ``clients`` concurrent clients: (seconds, latencies)."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            began = time.perf_counter()
            answer = await http.post(
                "/v1/classify", files=[("files", ("x.jpg", images[i % len(images)]))]
            )
            answer.raise_for_status()
            latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - began, latencies


def batch_totals(url: str) -> np.ndarray:
    """(forward passes, images, seconds in forward passes) so far, from the server's metrics."""
    wanted = (
        "headstart_batch_size_count",
        "headstart_batch_size_sum",
        "headstart_batch_seconds_sum",
    )
    values = dict.fromkeys(wanted, 0.0)
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return np.array([values[name] for name in wanted])


def measure(head: Path, images: list[bytes], max_batch: int) -> dict:
    """Per client count: (requests/s, (p50, p99) ms, mean batch size, share of time in forward)."""
    process, url = start(head, max_batch)
    try:
        asyncio.run(load(url, images, 4, 16))  # warm-up
        results = {}
        for clients, requests in LEVELS.items():
            before = batch_totals(url)
            seconds, latencies = asyncio.run(load(url, images, clients, requests))
            passes, count, busy = batch_totals(url) - before
            results[clients] = (
                requests / seconds,
                np.percentile(latencies, [50, 99]) * 1000,
                count / passes,
                busy / seconds,
            )
        return results
    finally:
        process.terminate()
        process.wait(timeout=30)


def backbone_rates(head: Path, images: list[bytes], seconds: float = 8.0) -> dict[int, float]:
    """Images/s of the server's forward pass alone, at batch 1 and 32, on decoded images."""
    engine = load_engine(head, None, device="cpu")
    decoded = torch.stack([engine.decode(data) for data in images[:32]])
    rates = {}
    for size in (1, 32):
        batch = decoded[:size]
        engine.embed(batch)
        count, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            engine.embed(batch)
            count += size
        rates[size] = count / (time.perf_counter() - began)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headstart-serve-") as tmp:
        root = Path(tmp)
        train = root / "train"
        for folder in sorted((args.data / "train").iterdir())[:3]:
            (train / folder.name).mkdir(parents=True)
            for path in sorted(folder.iterdir())[:12]:
                (train / folder.name / path.name).symlink_to(path)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "headstart",
                "train",
                str(train),
                "--model",
                "resnet18",
                "--weights",
                "none",
                "--cache",
                str(root / "cache"),
                "-o",
                str(root / "head"),
                "-q",
                "--device",
                "cpu",
            ],
            check=True,
            capture_output=True,
        )
        images = [p.read_bytes() for p in sorted((args.data / "val").rglob("*.JPEG"))[:64]]
        alone = backbone_rates(root / "head", images)
        on = measure(root / "head", images, 32)
        off = measure(root / "head", images, 1)
    print("resnet18 on CPU, single-image classify requests over loopback")
    print(f"{'clients':>8} {'batching on':>40} {'batching off':>22}")
    for clients in LEVELS:
        (rate_on, lat_on, size, busy), (rate_off, lat_off, _, busy_off) = on[clients], off[clients]
        print(
            f"{clients:>8} {rate_on:8.1f} req/s p50 {lat_on[0]:6.0f} ms "
            f"batch {size:4.1f} busy {busy:4.0%} "
            f"{rate_off:8.1f} req/s p50 {lat_off[0]:6.0f} ms busy {busy_off:4.0%}"
        )
    print(
        f"single client latency: batching on p50 {on[1][1][0]:.0f} ms p99 {on[1][1][1]:.0f} ms; "
        f"off p50 {off[1][1][0]:.0f} ms p99 {off[1][1][1]:.0f} ms; "
        f"on/off {on[1][1][0] / off[1][1][0]:.2f} (an idle service dispatches at once: <= 1.10)"
    )
    print(
        f"backbone alone: batch 1 {alone[1]:.1f} img/s, batch 32 {alone[32]:.1f} img/s "
        f"({alone[32] / alone[1]:.2f}x from batching the model itself)"
    )
    print(f"throughput at 32 clients: {on[32][0] / off[32][0]:.2f}x with batching (target >= 2x)")


if __name__ == "__main__":
    main()
