"""Extraction speed: headstart against the plain PyTorch-tutorial loop, side by side.

For each model (random weights, seeded the same way on both sides, since hub downloads fail
offline; speed does not depend on the weights' values):

* tutorial: ImageFolder, Resize 256 / CenterCrop 224 / Normalize, DataLoader with 2 workers,
  ``model.eval()`` under ``no_grad``, fp32;
* headstart: ``extract()`` into a fresh cache with the same preprocessing, end to end (listing,
  model build and compile, decoding, hashing, writing shards); its forward pass is watched
  batch by batch (``forward_probe``), which gives its in-run forward rate;
* model only: the forward pass the run used, rebuilt from the run's resolved recipe (precision,
  preprocessing), with the run's compile decision, batch size and thread count, on pre-decoded
  uint8 batches, timed after warm-up (and compiling); both sides' settings are printed;
* cosine: both sides' embeddings of the images, and of some of them upscaled to about 2000 px
  (so that headstart decodes them at reduced size in the DCT domain and the tutorial in full);
* cache hit: the same ``extract()`` again, and again as a fresh ``headstart`` process.

It also prints the peak memory of a headstart process at two image counts.

    python bench/extract.py [--data DIR] [--models resnet50,resnet18] [--limit N]
                            [--compile auto|on|off] [--large 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from forward_probe import ForwardRecord, memory_format, recording, recording_embedder
from peak_memory import run_measured
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from headstart.cache import EmbeddingCache
from headstart.device import cpu_has_native_bf16
from headstart.extract import ExtractOptions, PreprocessOverrides, extract, resolve_recipe
from headstart.models import get_backbone
from headstart.models.decode import decode_image
from headstart.models.features import build_feature_model
from headstart.models.preprocess import normalize, to_uint8_tensor

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
BATCH = 32
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
COMPILE = {"auto": None, "on": True, "off": False}
LARGE_SIDE = 2000


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


def run_options(model_name: str, compile: bool | None, **changes: object) -> ExtractOptions:
    options = ExtractOptions(
        model=model_name,
        weights="none",
        device="cpu",
        preprocess=PreprocessOverrides(resize_size=256, crop_size=224),
        batch_size=BATCH,
        compile=compile,
    )
    return dataclasses.replace(options, **changes)


def cli_command(options: ExtractOptions, folder: Path, cache: Path) -> list[str]:
    """``headstart extract`` asking for what ``options`` ask: a new process finds the recipe
    remembered only for the same request (device and precision included)."""
    preprocess = options.preprocess
    return [
        *(sys.executable, "-m", "headstart", "extract", str(folder)),
        *("--model", options.model, "--weights", options.weights),
        *("--resize", str(preprocess.resize_size), "--crop", str(preprocess.crop_size)),
        *("--device", options.device, "--precision", options.precision),
        *("--cache", str(cache), "-q"),
    ]


def headstart_run(
    options: ExtractOptions, folder: Path, cache: Path
) -> tuple[float, object, ForwardRecord]:
    record = ForwardRecord()
    started = time.perf_counter()
    with recording(record):
        summary = extract([str(folder)], options, cache)
    return time.perf_counter() - started, summary, record


def decoded_batches(paths: list[Path], preprocess, batch_size: int) -> list[torch.Tensor]:
    """Up to four full batches of uint8 pixels, decoded as the run's reader decodes them."""
    count = batch_size * max(1, min(4, len(paths) // batch_size))
    pixels = [
        to_uint8_tensor(
            decode_image(paths[i % len(paths)].read_bytes(), preprocess.resize_size), preprocess
        )
        for i in range(count)
    ]
    return [torch.stack(pixels[i : i + batch_size]) for i in range(0, count, batch_size)]


def model_only(
    options: ExtractOptions, run: ForwardRecord, paths: list[Path]
) -> tuple[float, ForwardRecord, float]:
    """Images per second of the run's forward pass alone, and of the tutorial's (eager fp32,
    NCHW, ``no_grad``), on the same pre-decoded batches.

    The forward pass is built as ``extract()`` builds it: an Embedder over the recipe that
    ``options`` resolve to, compiled when the run's batches ran compiled, in this thread (whose
    torch thread count the run's forward passes used, which is checked)."""
    recipe = resolve_recipe(options)
    batches = decoded_batches(paths, recipe.preprocess, run.batch_size)
    record = ForwardRecord()
    embedder = recording_embedder(record)(
        build_feature_model(recipe.backbone, recipe.layer).module,
        recipe.preprocess,
        recipe.device,
        recipe.precision,
        compile=run.compiled,
    )
    rate = _rate(embedder, batches)
    if record.recipe() != run.recipe():
        raise RuntimeError(f"model only ran {record.describe()}, the run {run.describe()}")

    plain = seeded_model(options.model)
    images = [normalize(pixels, recipe.preprocess) for pixels in batches]

    def plain_forward(batch: torch.Tensor) -> None:
        with torch.no_grad():
            plain(batch)

    return rate, record, _rate(plain_forward, images)


def _rate(forward, batches: list[torch.Tensor], warmup: int = 3, rounds: int = 8) -> float:
    for i in range(warmup):  # the first compiles when compiling; the rest settle caches
        forward(batches[i % len(batches)])
    started = time.perf_counter()
    for i in range(rounds):
        forward(batches[i % len(batches)])
    return rounds * len(batches[0]) / (time.perf_counter() - started)


def long_side(paths: list[Path]) -> int:
    """The median long side of the images, in pixels (read from their headers)."""
    sides = []
    for path in paths:
        with Image.open(path) as image:
            sides.append(max(image.size))
    return int(np.median(sides))


def cosine(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))


@dataclass(frozen=True)
class Agreement:
    """Cosine similarity of two vectors per image: as they are, and centred on a common mean.

    With random weights every image's vector points almost the same way (two unrelated images
    reach a cosine near 0.99), so raw cosines all look close to 1; centring on the mean vector
    of the set takes that shared direction out, and what is left shows real differences.
    """

    raw: np.ndarray
    centred: np.ndarray

    @classmethod
    def of(cls, ours: np.ndarray, theirs: np.ndarray, centre: np.ndarray) -> Agreement:
        return cls(cosine(ours, theirs), cosine(ours - centre, theirs - centre))

    def describe(self, stat: str = "min") -> str:
        raw, centred = getattr(self.raw, stat)(), getattr(self.centred, stat)()
        return f"{stat} {raw:.6f} (centred {centred:.5f})"


def similarity(
    cache: Path, summary, tutorial_vectors: dict[str, np.ndarray], centre: np.ndarray
) -> Agreement:
    """headstart's against the tutorial's vector, image by image."""
    order = sorted(tutorial_vectors)
    store = EmbeddingCache(cache).open(summary.fingerprint)
    theirs = np.stack([tutorial_vectors[p] for p in order])
    return Agreement.of(store.load_files(order), theirs, centre)


def unrelated(tutorial_vectors: dict[str, np.ndarray], centre: np.ndarray) -> Agreement:
    """The scale to read the above on: the tutorial's vectors of two different images."""
    vectors = np.stack([tutorial_vectors[p] for p in sorted(tutorial_vectors)])
    return Agreement.of(vectors, np.roll(vectors, len(vectors) // 2, axis=0), centre)


def large_photos(paths: list[Path], folder: Path, count: int) -> Path:
    """``count`` of the images, evenly spread, upscaled to LARGE_SIDE px on the long side."""
    step = max(1, len(paths) // count)
    for i, path in enumerate(paths[::step][:count]):
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = LARGE_SIDE / max(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            target = folder / path.parent.name / f"{i:03d}-{path.stem}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.resize(size, Image.Resampling.LANCZOS).save(target, quality=90)
    return folder


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
    parser.add_argument(
        "--compile", choices=COMPILE, default="auto", help="headstart's compile decision"
    )
    parser.add_argument("--large", type=int, default=20, help="How many images to upscale.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        work = Path(tmp)
        folder = args.data
        if args.limit:  # a class-folder tree of the first N images, as symlinks
            folder = work / "data"
            for path in image_paths(args.data, args.limit):
                link = folder / path.parent.name / f"{path.parent.parent.name}-{path.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())  # a relative --data must not dangle
        paths = image_paths(folder, None)
        large = large_photos(paths, work / "large", args.large)
        print(
            f"{len(paths)} images from {args.data} (+{len(image_paths(large, None))} upscaled to "
            f"{LARGE_SIDE} px); torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} cores, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"
        )
        for model_name in args.models.split(","):
            report(model_name, folder, paths, large, work, COMPILE[args.compile])
        print("\npeak memory of a headstart process (resnet18, no compile):")
        for count in (len(paths) // 5, len(paths)):
            print(f"  {count:6d} images: {peak_rss_mb(folder, 'resnet18', count, work):7.0f} MB")


def report(
    model_name: str,
    folder: Path,
    paths: list[Path],
    large: Path,
    work: Path,
    compile: bool | None,
) -> None:
    n = len(paths)
    options = run_options(model_name, compile)
    base_seconds, base_vectors = tutorial(model_name, folder)
    cache = work / f"cache-{model_name}"
    ours_seconds, summary, run = headstart_run(options, folder, cache)
    hit_seconds, hit, _ = headstart_run(options, folder, cache)
    started = time.perf_counter()
    subprocess.run(cli_command(options, folder, cache), check=True, capture_output=True)
    hit_process_seconds = time.perf_counter() - started
    only_rate, only, plain_only_rate = model_only(options, run, paths)
    if run.compiled != summary.compiled:
        print(f"  NOTE: the run decided compile={summary.compiled} but its batches ran otherwise")

    centre = np.stack(list(base_vectors.values())).mean(axis=0)
    small_cos = similarity(cache, summary, base_vectors, centre)
    large_tutorial, large_cos = tutorial(model_name, large)[1], {}
    for precision in dict.fromkeys([run.precision, "fp32"]):
        large_options = dataclasses.replace(options, precision=precision)
        large_cache = work / f"cache-large-{model_name}-{precision}"
        _, large_summary, _ = headstart_run(large_options, large, large_cache)
        large_cos[precision] = similarity(large_cache, large_summary, large_tutorial, centre)

    base_rate, ours_rate = n / base_seconds, n / ours_seconds
    steady, in_run = summary.steady_images_per_second, run.steady_rate()
    print(f"\n{model_name} (compile {'on' if summary.compiled else 'off'})")
    print(f"  tutorial loop      {base_rate:7.1f} img/s   ({base_seconds:6.1f} s)")
    print(
        f"  headstart          {ours_rate:7.1f} img/s   ({ours_seconds:6.1f} s end to end, "
        f"of which {summary.startup_seconds:.1f} s model build/compile and first batch, "
        f"{summary.compile_seconds:.1f} s the compiling batch)"
    )
    print(f"    steady state     {steady:7.1f} img/s")
    print(f"    its forward pass {in_run:7.1f} img/s   (the run's steady full batches alone)")
    print(
        f"  ratio              {ours_rate / base_rate:7.2f} x end to end, "
        f"{steady / base_rate:.2f} x steady state (target >= 3x for resnet50)"
    )
    print(f"  forward pass       run:        {run.describe()}")
    print(f"                     model only: {only.describe()}")
    print(
        f"  model only         {only_rate:7.1f} img/s   headstart end to end = "
        f"{ours_rate / only_rate:.0%}, steady state = {steady / only_rate:.0%} (target >= 85%); "
        f"the run's own forward pass = {in_run / only_rate:.0%}"
    )
    print(
        f"  tutorial's model   {plain_only_rate:7.1f} img/s   model only, eager fp32 "
        f"{memory_format(seeded_model(model_name))}: headstart's forward pass is "
        f"{only_rate / plain_only_rate:.2f}x as fast"
    )
    print(
        f"  ceiling            {only_rate / base_rate:7.2f} x   headstart model only / tutorial "
        "loop (no pipeline outruns its forward pass)"
    )
    print(
        f"  cosine vs tutorial {n} images at {long_side(paths)} px, headstart {run.precision} "
        f"(tutorial fp32): {small_cos.describe()}, {small_cos.describe('mean')} (target >= 0.999)"
    )
    for precision, values in large_cos.items():
        print(
            f"                     {len(values.raw)} upscaled to {LARGE_SIDE} px (reduced-size "
            f"decoding), headstart {precision}: {values.describe()}, {values.describe('mean')}"
        )
    print(
        "                     two different images (the scale to read these on): "
        f"{unrelated(base_vectors, centre).describe('mean')}"
    )
    print(
        f"  cache-hit rerun    {hit_seconds:7.2f} s in process = "
        f"{hit_seconds / ours_seconds:.1%} of the first run; {hit_process_seconds:.1f} s as a "
        f"new process = {hit_process_seconds / ours_seconds:.1%} (target < 5%)"
    )
    if not (hit.embedded == 0 and hit.from_cache == n):
        raise RuntimeError(f"the rerun embedded {hit.embedded} and found {hit.from_cache} of {n}")


if __name__ == "__main__":
    main()
