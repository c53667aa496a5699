"""Input paths side by side: the same images embedded from a folder, from tar shards, and from
a real S3 server (moto's server mode, its own process on loopback) holding those shards and that
folder, in one run, each into a fresh cache.

The rates are images embedded over the whole ``extract()`` call (listing, model build, reading,
hashing, decoding, forward, writing), over ``--rounds`` rounds taken in turn, so a noisy
neighbour slows every input alike; the best and the median round are both printed, with their
ratios to the folder's. Targets: tar shards at least as fast as the folder, S3 shards within 20%
of it. Every run must embed the same content keys: the bench checks that too. A warm-up run of
each input comes first, so that no round pays for the first import of s3fs or the model files.

Shards hold ``--shard-size`` samples (img2dataset writes 10,000 a shard; each shard costs a few
requests, which tiny shards would make the measure of). ``--copies N`` takes each photo N times,
the copies a JPEG comment apart (the same pixels, other bytes, so other content keys), for a
collection large enough that per-run costs (starting workers, listing) do not decide the rates.

    python bench/inputs.py [--images DIR] [--limit 600] [--copies 1] [--model resnet18]
                           [--rounds 2] [--shard-size 1000]

Needs the ``s3`` extra and moto (``pip install 's3fs' 'moto[server]' boto3``).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from headstart.cache import EmbeddingCache
from headstart.extract import ExtractOptions, PreprocessOverrides, extract

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
BUCKET = "bench"


@dataclass
class Measured:
    name: str
    source: str
    seconds: float
    embedded: int
    keys: frozenset


def image_paths(data: Path, limit: int) -> list[Path]:
    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"no images under {data}")
    # Every n-th image, so that a limit keeps every class.
    step = max(1, len(paths) // limit)
    return paths[::step][:limit]


def with_comment(data: bytes, copy: int) -> bytes:
    """The JPEG ``data`` with a comment segment naming ``copy`` after its start marker: the same
    picture, other bytes. Copy 0 is ``data`` itself."""
    if copy == 0:
        return data
    if data[:2] != b"\xff\xd8":
        sys.exit("--copies needs JPEG photos")
    comment = f"headstart bench copy {copy}".encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


def make_inputs(
    paths: list[Path], root: Path, shard_size: int, copies: int
) -> tuple[Path, Path, int]:
    """A folder (a sub-folder per class, named as the photos' own) and webdataset shards of the
    same bytes, each photo ``copies`` times; the folder, the shards and the count of images."""
    folder, shards = root / "folder", root / "shards"
    images = []  # (file in the folder, its label): the shards are written from these
    for copy in range(copies):
        for path in paths:
            target = folder / path.parent.name / f"{copy}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(with_comment(path.read_bytes(), copy))
            images.append((target, path.parent.name))
    shards.mkdir()
    for number, start in enumerate(range(0, len(images), shard_size)):
        with tarfile.open(shards / f"{number:05d}.tar", "w") as tar:
            for index, (path, label) in enumerate(images[start : start + shard_size], start):
                key = f"{index:06d}"
                tar.add(path, f"{key}{path.suffix.lower()}")
                cls = label.encode()
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = len(cls)
                tar.addfile(info, io.BytesIO(cls))
    return folder, shards, len(images)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(log_dir: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (not a thread of this one, which runs the model)."""
    port = free_port()
    log = open(log_dir / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                sys.exit(f"moto server did not start (see {log_dir / 'moto.log'})")
            time.sleep(0.1)


def upload(endpoint: str, root: Path, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}")


def measure(name: str, source: str, options: ExtractOptions, scratch: Path) -> Measured:
    cache = scratch / f"cache-{name.replace(' ', '-')}-{time.monotonic_ns()}"
    started = time.perf_counter()
    summary = extract([source], options, cache)
    seconds = time.perf_counter() - started
    if summary.failed:
        sys.exit(f"{name}: {summary.failed} images failed: {summary.failure_examples[:3]}")
    store = EmbeddingCache(cache).open()
    keys = frozenset()
    with EmbeddingCache(cache).catalog() as catalog:
        keys |= {r.key for block in catalog.iter_files() for r in block}
        keys |= {r.key for block in catalog.iter_samples() for r in block}
    assert len(store) == summary.embedded
    shutil.rmtree(cache)
    return Measured(name, source, seconds, summary.embedded, keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--copies", type=int, default=1, help="Each photo this many times.")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--resize", type=int, help="A smaller input makes reading count more.")
    parser.add_argument("--crop", type=int)
    args = parser.parse_args()

    paths = image_paths(args.images, args.limit)
    sizes = PreprocessOverrides(resize_size=args.resize, crop_size=args.crop)
    options = ExtractOptions(
        model=args.model, weights="none", workers=args.workers, preprocess=sizes
    )
    with tempfile.TemporaryDirectory(prefix="headstart-bench-inputs-") as tmp:
        scratch = Path(tmp)
        folder, shards, images = make_inputs(paths, scratch, args.shard_size, args.copies)
        server, endpoint = start_s3(scratch)
        try:
            os.environ.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_DEFAULT_REGION="us-east-1",
            )
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            upload(endpoint, shards, "shards")
            upload(endpoint, folder, "folder")
            count = len(list(shards.iterdir()))
            inputs = [
                ("folder", str(folder)),
                ("tar shards", str(shards / f"{{00000..{count - 1:05d}}}.tar")),
                ("S3 shards", f"s3://{BUCKET}/shards/{{00000..{count - 1:05d}}}.tar"),
                ("S3 folder", f"s3://{BUCKET}/folder"),
            ]
            megabytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
            print(
                f"{images} images ({len(paths)} photos from {args.images} x {args.copies}, "
                f"{megabytes:.1f} MB), {count} shards of {args.shard_size}; model {args.model}, "
                f"{os.cpu_count()} CPUs, {args.rounds} rounds",
                flush=True,
            )
            for name, source in inputs:  # model files, page cache, s3fs's first import
                measure(f"warm-up {name}", source, options, scratch)
            runs: dict[str, list[Measured]] = {name: [] for name, _ in inputs}
            for round_number in range(args.rounds):
                for name, source in inputs:
                    result = measure(name, source, options, scratch)
                    print(
                        f"  round {round_number + 1}  {name:<11} {result.seconds:6.1f} s",
                        flush=True,
                    )
                    runs[name].append(result)
        finally:
            server.terminate()
            server.wait(timeout=10)
    report(runs, images)


def report(runs: dict[str, list[Measured]], images: int) -> None:
    """Best and median of each input's rounds, as images/s and as a ratio to the folder's."""
    best = {name: min(r.seconds for r in results) for name, results in runs.items()}
    median = {name: statistics.median(r.seconds for r in results) for name, results in runs.items()}
    base = runs["folder"][0]
    print(
        f"\n{'input':<11} {'best img/s':>10} {'vs folder':>10} {'median img/s':>13} "
        f"{'vs folder':>10}  same keys"
    )
    for name, results in runs.items():
        same = all(r.keys == base.keys and r.embedded == images for r in results)
        print(
            f"{name:<11} {images / best[name]:10.1f} {best['folder'] / best[name]:9.2f}x "
            f"{images / median[name]:13.1f} {median['folder'] / median[name]:9.2f}x  "
            f"{'yes' if same else 'NO'}"
        )
    for label, seconds in (("best", best), ("median", median)):
        folder, tar, s3 = seconds["folder"], seconds["tar shards"], seconds["S3 shards"]
        print(
            f"{label}: tar shards >= folder: {'met' if tar <= folder else 'NOT met'}; "
            f"S3 shards within 20% of folder: {'met' if s3 <= folder / 0.8 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
