"""Extraction speed: headstart against the plain PyTorch-tutorial loop, side by side.

For each model (random weights, seeded the same way on both sides, since hub downloads fail
offline; speed does not depend on the weights' values):

* tutorial: ImageFolder, Resize 256 / CenterCrop 224 / Normalize, DataLoader with 2 workers,
  ``model.eval()`` under ``no_grad``, fp32;
* headstart: ``extract()`` into a fresh cache with the same preprocessing, end to end (listing,
  model build and compile, decoding, hashing, writing shards);
* model only: headstart's forward pass on pre-decoded tensors, same batch, after warm-up;
* cache hit: the same ``extract()`` again, and again as a fresh ``headstart`` process.

It prints the rates, ratios, the cosine similarity of the two sides' embeddings, and the peak
memory of a headstart process at two image counts.

    python bench/extract.py [--data DIR] [--models resnet50,resnet18] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from peak_memory import run_measured
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from headstart.cache import EmbeddingCache
from headstart.extract import ExtractOptions, PreprocessOverrides, extract, get_backbone
from headstart.extract.decode import decode_image
from headstart.extract.features import build_feature_model
from headstart.extract.mapper import Embedder
from headstart.extract.preprocess import to_uint8_tensor

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
BATCH = 32
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def image_paths(data: Path, limit: int | None) -> list[Path]:
    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return paths[:limit] if limit else paths


def tutorial(model_name: str, folder: Path) -> tuple[float, dict[str, np.ndarray]]:
    """The loop from the PyTorch transfer-learning tutorial, timed from start to last batch."""
    started = time.perf_counter()
    dataset = ImageFolder(
        str(folder),
        T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)]),
    )
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=False, num_workers=2)
    model = seeded_model(model_name)
    outputs = []
    with torch.no_grad():
        for images, _ in loader:
            outputs.append(model(images).numpy())
    seconds = time.perf_counter() - started
    paths = [os.path.abspath(p) for p, _ in dataset.samples]
    return seconds, dict(zip(paths, np.concatenate(outputs), strict=True))


def seeded_model(model_name: str) -> torch.nn.Module:
    """torchvision's model with headstart's seeded random init and the classifier removed."""
    return build_feature_model(get_backbone(model_name, "none")).module.eval()


def headstart_run(model_name: str, folder: Path, cache: Path) -> tuple[float, object]:
    options = ExtractOptions(
        model=model_name,
        weights="none",
        device="cpu",
        preprocess=PreprocessOverrides(resize_size=256, crop_size=224),
        batch_size=BATCH,
    )
    started = time.perf_counter()
    summary = extract([str(folder)], options, cache)
    return time.perf_counter() - started, summary


def model_only(
    model_name: str, paths: list[Path], compiled: bool, fingerprint
) -> tuple[float, float]:
    """Images per second of the forward pass alone on one already decoded batch: headstart's
    path (channels-last, inference mode, compiled when the run compiled), and the tutorial's
    (eager fp32, NCHW, ``no_grad``)."""
    from headstart.extract.preprocess import Preprocess, normalize

    preprocess = Preprocess.from_dict(fingerprint.recipe["preprocess"])
    pixels = torch.stack(
        [to_uint8_tensor(decode_image(p.read_bytes(), 256), preprocess) for p in paths[:BATCH]]
    )
    embedder = Embedder(
        seeded_model(model_name), preprocess, torch.device("cpu"), "fp32", compile=compiled
    )
    plain = seeded_model(model_name)
    images = normalize(pixels, preprocess)

    def plain_forward() -> None:
        with torch.no_grad():
            plain(images)

    return _rate(lambda: embedder(pixels)), _rate(plain_forward)


def _rate(forward, rounds: int = 8) -> float:
    forward()  # warm-up (and compile)
    started = time.perf_counter()
    for _ in range(rounds):
        forward()
    return rounds * BATCH / (time.perf_counter() - started)


def cosine(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))


def peak_rss_mb(folder: Path, model_name: str, count: int, workdir: Path) -> float:
    """Peak resident memory of one headstart process (and its largest decoding worker)."""
    cache = workdir / f"memory-cache-{count}"
    manifest = workdir / f"manifest-{count}.txt"
    manifest.write_text("".join(f"{p}\n" for p in image_paths(folder, count)))
    args = [
        "extract",
        str(manifest),
        "--model",
        model_name,
        "--weights",
        "none",
        "--no-compile",
        "--cache",
        str(cache),
        "-q",
    ]
    done = run_measured(args)
    return done.main_mb + done.workers_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", default="resnet50,resnet18")
    parser.add_argument("--limit", type=int, help="Use only the first N images.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        work = Path(tmp)
        folder = args.data
        if args.limit:  # a class-folder tree of the first N images, as symlinks
            folder = work / "data"
            for path in image_paths(args.data, args.limit):
                link = folder / path.parent.name / f"{path.parent.parent.name}-{path.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path)
        paths = image_paths(folder, None)
        print(
            f"{len(paths)} images from {args.data}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {os.cpu_count()} cores"
        )
        for model_name in args.models.split(","):
            report(model_name, folder, paths, work)
        print("\npeak memory of a headstart process (resnet18, no compile):")
        for count in (len(paths) // 5, len(paths)):
            print(f"  {count:6d} images: {peak_rss_mb(folder, 'resnet18', count, work):7.0f} MB")


def report(model_name: str, folder: Path, paths: list[Path], work: Path) -> None:
    n = len(paths)
    base_seconds, base_vectors = tutorial(model_name, folder)
    cache = work / f"cache-{model_name}"
    ours_seconds, summary = headstart_run(model_name, folder, cache)
    hit_seconds, hit = headstart_run(model_name, folder, cache)
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "headstart",
            "extract",
            str(folder),
            "--model",
            model_name,
            "--weights",
            "none",
            "--resize",
            "256",
            "--crop",
            "224",
            "--cache",
            str(cache),
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    hit_process_seconds = time.perf_counter() - started
    compiled = summary.compiled
    only_rate, plain_only_rate = model_only(model_name, paths, compiled, summary.fingerprint)

    store = EmbeddingCache(cache).open(summary.fingerprint)
    order = sorted(base_vectors)
    similarity = cosine(store.load_files(order), np.stack([base_vectors[p] for p in order]))

    base_rate, ours_rate = n / base_seconds, n / ours_seconds
    print(f"\n{model_name} (compile {'on' if compiled else 'off'})")
    print(f"  tutorial loop      {base_rate:7.1f} img/s   ({base_seconds:6.1f} s)")
    steady = summary.steady_images_per_second
    print(
        f"  headstart          {ours_rate:7.1f} img/s   ({ours_seconds:6.1f} s end to end, "
        f"of which {summary.startup_seconds:.1f} s model build/compile and first batch)"
    )
    print(f"    steady state     {steady:7.1f} img/s")
    print(
        f"  ratio              {ours_rate / base_rate:7.2f} x end to end, "
        f"{steady / base_rate:.2f} x steady state (target >= 3x for resnet50)"
    )
    print(
        f"  model only         {only_rate:7.1f} img/s   headstart end to end = "
        f"{ours_rate / only_rate:.0%}, steady state = {steady / only_rate:.0%} (target >= 85%)"
    )
    print(
        f"  tutorial's model   {plain_only_rate:7.1f} img/s   model only, eager fp32 NCHW: "
        f"headstart's forward pass is {only_rate / plain_only_rate:.2f}x as fast"
    )
    print(
        f"  ceiling            {only_rate / base_rate:7.2f} x   headstart model only / tutorial "
        "loop (no pipeline outruns its forward pass)"
    )
    print(
        f"  cosine vs tutorial min {similarity.min():.5f}  mean {similarity.mean():.5f}"
        "  (target >= 0.999)"
    )
    print(
        f"  cache-hit rerun    {hit_seconds:7.2f} s in process = "
        f"{hit_seconds / ours_seconds:.1%} of the first run; {hit_process_seconds:.1f} s as a "
        f"new process = {hit_process_seconds / ours_seconds:.1%} (target < 5%)"
    )
    assert hit.embedded == 0 and hit.from_cache == n


if __name__ == "__main__":
    main()
