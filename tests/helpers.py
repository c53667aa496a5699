"""Test helpers: small real image files made on the fly, and a fast model configuration."""

from __future__ import annotations

import contextlib
import io
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

TESTS = Path(__file__).parent
TINY_MODELS = TESTS / "tiny_models.py"

# Random-init weights at a small input size, in fp32 whatever the processor: ``--precision
# auto`` is bf16 on CPUs with AVX512-BF16 or AMX, and the numbers these tests compare must not
# depend on the machine that runs them. FAST_ARGS adds a real torchvision model: the genuine
# code path, fast on two cores.
SMALL_FP32 = ["--weights", "none", "--resize", "40", "--crop", "32", "--precision", "fp32"]
FAST_ARGS = ["--model", "resnet18", *SMALL_FP32]

# The precisions the tests of the bf16 path run at: fp32, and bf16 forced (emulated, slowly but
# correctly, on processors without native bf16), so that path is tested on every machine.
PRECISIONS = ("fp32", "bf16")
# bf16 keeps 8 significant bits: one rounding is off by at most this much, relatively.
BF16_UNIT_ROUNDOFF = 2.0**-8


def published_shards(cache: Path) -> list[Path]:
    """Shards a reader may open. Not ``glob("*.h5")``: pathlib's glob also matches the hidden
    ``.tmp-*.h5`` file a writer is still filling."""
    from headstart.cache.shards import shard_paths

    return [p for d in sorted(cache.glob("*/shards")) for p in shard_paths(d)]


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_folder(root: Path, classes: dict[str, int], start_seed: int = 0) -> list[Path]:
    """``classes`` maps class name -> number of images; returns the paths, sorted."""
    paths = []
    seed = start_seed
    for name, count in classes.items():
        for i in range(count):
            paths.append(write_image(root / name / f"{name}_{i:03d}.jpg", seed))
            seed += 1
    return sorted(paths)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b""))
    return path


def make_odd_images(root: Path) -> dict[str, tuple[Path, bool]]:
    """Awkward and broken files: name -> (path, whether it should embed)."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, bool]] = {}

    good = write_image(root / "good.jpg", 0, size=(64, 48))
    out["good"] = (good, True)

    truncated = root / "truncated.jpg"
    data = write_image(root / "whole.jpg", 1, size=(256, 256)).read_bytes()
    (root / "whole.jpg").unlink()
    truncated.write_bytes(data[: len(data) // 2])
    out["truncated"] = (truncated, False)

    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    out["zero-byte"] = (empty, False)

    text = root / "text.jpg"
    text.write_text("this is not a JPEG\n" * 20)
    out["text-as-jpg"] = (text, False)

    sixteen = root / "sixteen.png"
    ramp = (np.arange(48 * 40, dtype=np.uint32).reshape(40, 48) * 34).astype(np.uint16)
    Image.fromarray(ramp).save(sixteen)
    out["16-bit-png"] = (sixteen, True)

    cmyk = root / "cmyk.jpg"
    Image.new("CMYK", (48, 40), (0, 128, 255, 20)).save(cmyk)
    out["cmyk-jpeg"] = (cmyk, True)

    palette = root / "palette.png"
    pal = Image.new("P", (48, 40), 1)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    pal.info["transparency"] = 1
    pal.save(palette, transparency=1)
    out["palette-alpha-png"] = (palette, True)

    rotated = root / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (60, 30), (200, 10, 10)).save(rotated, exif=exif.tobytes())
    out["exif-rotated"] = (rotated, True)

    out["decompression-bomb"] = (write_bomb_png(root / "bomb.png"), False)
    return out


COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}


def make_colour_folder(root: Path, per_class: int, start_seed: int = 0) -> Path:
    """Class folders of noisy images dominated by one colour each: easy to tell apart."""
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            rng = np.random.default_rng(start_seed + 1000 * c + i)
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, size=(40, 48, 3)), 0, 255)
            path = root / name / f"{name}_{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def free_port() -> int:
    """A free loopback port (closed again: a server the test starts binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: object):
    """``headstart ARGS...`` in process; exceptions propagate, so a traceback fails the test."""
    from click.testing import CliRunner

    from headstart.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def random_clip_config(image_size: int = 32) -> dict:
    """A tiny open_clip architecture: a 32-wide image-text space, two-layer towers. Random-init
    weights of it check plumbing (numbers the model computes), not behaviour."""
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    vision = {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 8}
    return {"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}


def add_random_clip_configs(directory: Path, sizes: dict[str, int]) -> None:
    """Register ``name -> image size`` tiny configs with open_clip, as a user adds their own
    (``open_clip.add_model_config``); then ``--model open_clip:NAME`` builds them."""
    import json

    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        (directory / f"{name}.json").write_text(json.dumps(random_clip_config(size)))
    open_clip.add_model_config(directory)


def wait_until_ready(
    url: str, alive: Callable[[], bool], why_not: Callable[[], object], seconds: float = 180
) -> None:
    """Poll ``url``/readyz until the service answers 200; fail with ``why_not()`` if the server
    stops first, or after ``seconds`` (slow machines load models slowly)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        assert alive(), why_not()
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.1)


@contextlib.contextmanager
def serving_in_thread(app) -> Iterator[str]:
    """``app`` on a uvicorn in a thread of this process, on a free loopback port, once ready;
    its URL. In process, so it sees what the test registered (an open_clip config, say)."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, thread.is_alive, lambda: "uvicorn stopped")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def photo_like_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A JPEG with what makes resampling hard in photos: detail at every scale, sharp edges."""
    width, height = size
    rng = np.random.default_rng(seed)
    # Texture whose amplitude falls with frequency, as in natural images, down to sensor noise.
    pixels = np.full((height, width, 3), 128.0, dtype=np.float32)
    for cell, amplitude in ((256, 60), (64, 30), (16, 16), (4, 10)):
        grid = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
        layer = Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)
        pixels += (np.asarray(layer, dtype=np.float32) - 127.5) * (amplitude / 127.5)
    pixels += 6.0 * rng.standard_normal(pixels.shape, dtype=np.float32)
    # Objects with sharp outlines and thin lines (wires, hair), as many per area at every size.
    shapes = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(shapes)
    count = max(4, width * height // 15_000)
    for _ in range(count):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.02, 0.2) * min(width, height)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - r, y - r * rng.uniform(0.3, 1.0), x + r, y + r), fill=fill)
    for _ in range(count):
        ends = tuple(rng.uniform(0, 1, 4) * (width, height, width, height))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line(ends, fill=fill, width=int(rng.integers(1, 4)))
    pixels += np.asarray(shapes, dtype=np.float32) - 128
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class WhereAmI(torch.utils.data.Dataset):
    """Two items, each the ``HEADSTART_MARK`` variable and working directory of the process
    that reads it: where DataLoader workers start (tests import by path, so datasets that
    travel to fork-server workers live here, in an importable module)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[str, str]:
        return os.environ.get("HEADSTART_MARK", ""), os.getcwd()
