"""The CUDA path, checked on a machine with a GPU (it installs nothing; it needs torch,
torchvision, numpy, pillow, h5py, click and tqdm, which GPU images carry).

It also checks the heads' GPU paths: the logreg solver on CUDA against the CPU, and FAISS search
on the GPU against the CPU when the FAISS installed there sees a GPU; and fine-tuning on CUDA
(autocast, channels-last, fused AdamW): the training step against a plain fp32 loop on the same
GPU, and a batch repeated ten times must lose at least half of its loss.

1. Correctness: embeddings made on the GPU at ``auto`` precision (bf16 or fp16 autocast) against
   CPU fp32 embeddings of the same images: per-image cosine similarity (target >= 0.99).
2. Speed: ``extract()`` end to end on the GPU, JPEGs decoded there (``--decode device``, nvJPEG)
   and, beside it, by the CPU workers (``--decode cpu``), against the model alone on
   pre-decoded batches on the same GPU. Targets: resnet50 at >= 85% of model-only and
   >= 12,000 img/s, vit_b_16 at >= 90%; each prints its projection for a million images (the
   goal: 90 s). The first model also runs compiled (CUDA graphs), checked against the CPU.
   To give the pipeline a run long enough to time, each image is also written in
   ``--copies`` variants with different bytes.
4. JPEG decoding on the GPU: the device decoder's pixels against torchvision's PIL reference
   at 32, 64, 224 and 384 px (mean |difference| <= 1/255), and its rate, decode only and with
   resize and crop; nvImageCodec's decode rate beside it where ``nvidia-nvimgcodec-cu13`` is
   installed, the measurement behind the choice of decoder.
3. The image-text path (``--clip ARCH``, open_clip's ViT-B-32 by default, random weights unless
   ``--clip-weights`` gives DEFAULT or a local checkpoint; ``--clip none`` skips it): on
   ``--clip-images`` images spread over the classes, on CUDA at ``auto`` precision and on the
   CPU at fp32, the image embeddings (cosine >= 0.99), the zero-shot head built from the class
   folder names (class weights cosine >= 0.99, predictions agree >= 95%), a few text queries
   (cosine >= 0.99) and text search over a saved FAISS index of the images (overlap@10 >= 0.8).
   Without open_clip it says so and goes on; without FAISS it skips only the search.

    python bench/gpu_check.py --data shared/data/imagenette-mini [--copies 8] [--cpu-images 256]

Without a GPU it stops, unless ``--smoke`` runs the same steps on the CPU at a tiny size (to check
the script itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING


def _import_headstart() -> None:
    """Import the checkout as ``headstart`` even when it is not installed (a bare GPU machine)."""
    try:
        import headstart  # noqa: F401
    except ImportError:
        shim = Path(tempfile.mkdtemp(prefix="headstart-shim-"))
        (shim / "headstart").symlink_to(Path(__file__).resolve().parents[1])
        sys.path.insert(0, str(shim))


_import_headstart()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from headstart.cache import EmbeddingCache  # noqa: E402
from headstart.errors import HeadstartError, first_line  # noqa: E402
from headstart.extract import ExtractOptions, ExtractSummary, extract  # noqa: E402
from headstart.extract.stages import describe_stages  # noqa: E402
from headstart.models import get_backbone  # noqa: E402
from headstart.models.decode import decode_image, jpeg_for_device  # noqa: E402
from headstart.models.device_decode import DeviceJpegDecoder, decode_jpegs  # noqa: E402
from headstart.models.embedder import Embedder  # noqa: E402
from headstart.models.features import build_feature_model  # noqa: E402
from headstart.models.preprocess import (  # noqa: E402
    DEFAULT_PREPROCESS,
    Preprocess,
    to_uint8_tensor,
)

if TYPE_CHECKING:
    from headstart.classify.zeroshot import ZeroShotHead


def write_variants(job: tuple[str, str, int]) -> None:
    source, out_dir, copies = job
    image = Image.open(source).convert("RGB")
    stem = Path(source).stem
    for copy in range(copies):
        # A different JPEG quality per copy: new bytes (so a new content key), same picture.
        image.save(Path(out_dir) / f"{stem}-{copy}.jpg", quality=95 - copy)


def make_collection(data: Path, out: Path, copies: int) -> list[Path]:
    sources = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    jobs = []
    for path in sources:
        folder = out / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(path), str(folder), copies))
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_variants, jobs, chunksize=32))
    return sorted(out.rglob("*.jpg"))


def model_only_rate(
    model_name: str,
    paths: list[Path],
    preprocess: Preprocess,
    device,
    precision,
    batch: int,
    rounds: int,
) -> float:
    pixels = torch.stack(
        [
            to_uint8_tensor(decode_image(p.read_bytes(), preprocess.resize_size), preprocess)
            for p in paths[:batch]
        ]
    )
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    model = build_feature_model(get_backbone(model_name, "none")).module
    embedder = Embedder(model, preprocess, device, precision)
    for _ in range(3):
        embedder(pixels)  # warm-up: cuDNN autotuning, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(rounds):
        embedder(pixels)
    return rounds * len(pixels) / (time.perf_counter() - started)


# Shares of model-only that end to end must reach, and the resnet50 rate (issue 22).
END_TO_END_TARGETS = {"resnet50": 0.85, "vit_b_16": 0.90}
RESNET50_MIN_RATE = 12_000.0
MILLION = 1_000_000


def timed_extract(
    collection: Path, options: ExtractOptions, cache: Path
) -> tuple[ExtractSummary, float]:
    started = time.perf_counter()
    summary = extract([str(collection)], options, cache)
    return summary, time.perf_counter() - started


def check(
    model_name: str, collection: Path, paths: list[Path], args, work: Path, first: bool
) -> bool:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch_size or (256 if device.type == "cuda" else 16)
    gpu_options = ExtractOptions(
        model=model_name,
        weights="none",
        device=device.type,
        batch_size=batch,
        workers=args.workers,
        decode="device",
        compile=False,
    )
    summary, seconds = timed_extract(collection, gpu_options, work / f"gpu-{model_name}")
    end_to_end = len(paths) / seconds
    cpu_decoded, cpu_decoded_seconds = timed_extract(
        collection, dataclasses.replace(gpu_options, decode="cpu"), work / f"cpudec-{model_name}"
    )
    precision = summary.fingerprint.recipe["precision"]
    preprocess = Preprocess.from_dict(summary.fingerprint.recipe["preprocess"])
    only = model_only_rate(model_name, paths, preprocess, device, precision, batch, args.rounds)

    sample = paths[: args.cpu_images]
    manifest = work / f"sample-{model_name}.txt"
    manifest.write_text("".join(f"{p}\n" for p in sample))
    cpu_options = ExtractOptions(
        model=model_name,
        weights="none",
        device="cpu",
        precision="fp32",
        store_dtype="float32",
        compile=False,
    )
    cpu = extract([str(manifest)], cpu_options, work / f"cpu-{model_name}")
    names = [str(p) for p in sample]
    on_cpu = EmbeddingCache(work / f"cpu-{model_name}").open(cpu.fingerprint).load_files(names)

    def cosine_to_cpu(cache: Path) -> np.ndarray:
        on_gpu = EmbeddingCache(cache).open(summary.fingerprint).load_files(names)
        return (on_gpu * on_cpu).sum(1) / (
            np.linalg.norm(on_gpu, axis=1) * np.linalg.norm(on_cpu, axis=1)
        )

    cosine = cosine_to_cpu(work / f"gpu-{model_name}")
    steady = summary.steady_images_per_second
    share = steady / only
    million = summary.startup_seconds + MILLION / max(steady, 1e-9)
    print(f"\n{model_name} on {device} ({precision}, batch {batch}), {len(paths)} images")
    print(
        f"  end to end, JPEGs decoded on {device.type}: {end_to_end:9.1f} img/s "
        f"({steady:.1f} steady state; {summary.decoded_on_device} decoded there)"
    )
    print(
        f"  end to end, JPEGs decoded by CPU workers: {len(paths) / cpu_decoded_seconds:9.1f}"
        f" img/s ({cpu_decoded.steady_images_per_second:.1f} steady state)"
    )
    target = END_TO_END_TARGETS.get(model_name)
    aim = f"target >= {target:.0%}" if target else "no target"
    print(f"  model only     {only:9.1f} img/s  -> steady state is {share:.0%} ({aim})")
    print(f"  a million images: {million:.0f} s projected (goal 90 s)")
    print(f"  {describe_stages(summary.stage_seconds, summary.loader_workers)}")
    print(
        f"  cosine vs CPU fp32 over {len(sample)} images: min {cosine.min():.5f} "
        f"mean {cosine.mean():.5f} (target >= 0.99)"
    )
    passed = bool(cosine.min() >= 0.99) and (target is None or share >= target or args.smoke)
    if model_name == "resnet50" and not args.smoke:
        passed = passed and steady >= RESNET50_MIN_RATE
    if first and args.compile_check:
        compiled_options = dataclasses.replace(gpu_options, compile=True)
        compiled, _ = timed_extract(collection, compiled_options, work / f"compiled-{model_name}")
        compiled_cosine = cosine_to_cpu(work / f"compiled-{model_name}")
        print(
            f"  compiled{' with CUDA graphs' if device.type == 'cuda' else ''}: "
            f"{compiled.steady_images_per_second:.1f} img/s steady state, "
            f"{compiled.startup_seconds:.1f} s to the first batch (compiling included); "
            f"cosine vs CPU min "
            f"{compiled_cosine.min():.5f} (target >= 0.99)"
        )
        passed = passed and compiled.compiled and bool(compiled_cosine.min() >= 0.99)
    return passed


def decode_check(data: Path, smoke: bool) -> bool:
    """The device decoder against PIL's pixels at four sizes, and its rate."""
    from torchvision import transforms

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    encoded = [p.read_bytes() for p in files[: 64 if smoke else None]]
    pairs = [(data, jpeg) for data in encoded if (jpeg := jpeg_for_device(data)) is not None]
    jpegs = [jpeg for _, jpeg in pairs]
    print(f"\nJPEG decoding on {device}: {len(jpegs)} of {len(encoded)} files go to it")
    passed = True
    for crop in (32, 64, 224, 384):
        preprocess = dataclasses.replace(
            DEFAULT_PREPROCESS, resize_size=crop * 256 // 224, crop_size=crop
        )
        reference = transforms.Compose(
            [
                transforms.Resize(preprocess.resize_size, antialias=True),
                transforms.CenterCrop(crop),
                transforms.PILToTensor(),
            ]
        )
        decoded = DeviceJpegDecoder(preprocess, device)(jpegs[:64])
        differences = [
            (pixels.cpu().int() - reference(full_decode(data)).int()).abs().float().mean()
            for pixels, (data, _) in zip(decoded, pairs[:64], strict=True)
        ]
        worst, mean = max(differences).item(), (sum(differences) / len(differences)).item()
        print(f"  {crop:>3} px: mean |difference| {mean:.3f}/255, worst image {worst:.3f}/255")
        passed = passed and worst <= 1.0
    decoder = DeviceJpegDecoder(DEFAULT_PREPROCESS, device)
    for label, run in (
        ("decode only", lambda group: decode_jpegs([j.data for j in group], device)),
        ("decode, resize and crop", decoder),
    ):
        run(jpegs[:8])  # warm-up: nvJPEG's handles and buffers
        synchronize(device)
        started = time.perf_counter()
        for start in range(0, len(jpegs), 256):
            run(jpegs[start : start + 256])
        synchronize(device)
        rate = len(jpegs) / (time.perf_counter() - started)
        print(f"  torchvision decode_jpeg, {label}: {rate:9.1f} img/s")
    try:
        from nvidia import nvimgcodec
    except ImportError:
        print("  nvImageCodec: not installed (pip install nvidia-nvimgcodec-cu13 to compare)")
    else:
        codec = nvimgcodec.Decoder()
        codec.decode(encoded[:8])
        started = time.perf_counter()
        for start in range(0, len(encoded), 256):
            codec.decode(encoded[start : start + 256])
        synchronize(device)
        rate = len(encoded) / (time.perf_counter() - started)
        print(f"  nvImageCodec decode only:          {rate:9.1f} img/s")
    print(f"  parity target: worst image <= 1/255 at every size: {'met' if passed else 'MISSED'}")
    return passed


def full_decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def heads_check(smoke: bool) -> bool:
    """Heads on the GPU: the logreg solver on CUDA against the same fit on the CPU, and FAISS
    GPU search against CPU search when the FAISS there sees a GPU."""
    from headstart.classify.linear import LogisticRegressionHead

    n, d = (2000, 64) if smoke else (50_000, 2048)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, :32] @ rng.normal(size=(32, 10)) + rng.normal(size=(n, 10)) * 4).argmax(axis=1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timings, heads = {}, {}
    for where in (device, "cpu"):
        started = time.perf_counter()
        heads[where] = LogisticRegressionHead(C=1e-3, device=where).fit(X, y)
        timings[where] = time.perf_counter() - started
    agreement = float(np.mean(heads[device].predict(X) == heads["cpu"].predict(X)))
    print(
        f"\nlogreg, {n} x {d}, 10 classes: {device} {timings[device]:.2f} s, "
        f"cpu {timings['cpu']:.2f} s, predictions agree on {agreement:.2%} (target >= 99%)"
    )
    ok = agreement >= 0.99
    try:
        import faiss
    except ImportError:
        print("FAISS GPU search: not checked (no faiss on this machine)")
        return ok
    if faiss.get_num_gpus() == 0:
        print("FAISS GPU search: not checked (this FAISS build sees no GPU)")
        return ok
    from headstart.search.exact import exact_search, l2_normalize

    database, queries = l2_normalize(X), l2_normalize(X[:1000])
    found = {}
    for gpu in (True, False):
        started = time.perf_counter()
        found[gpu] = exact_search(database, queries, 10, gpu=gpu)[1]
        seconds = time.perf_counter() - started
        print(f"FAISS flat search on {'GPU' if gpu else 'CPU'}: {seconds:.3f} s")
    pairs = zip(found[True], found[False], strict=True)
    same = float(np.mean([set(a) == set(b) for a, b in pairs]))
    print(f"  same neighbors on GPU and CPU for {same:.1%} of queries (target >= 99%)")
    return ok and same >= 0.99


def finetune_check(smoke: bool) -> bool:
    """The fine-tuning step on the GPU at ``auto`` precision against a plain fp32 loop there."""
    import torchvision
    from torch import nn

    from headstart.extract import resolve_recipe
    from headstart.finetune.data import LabelledImages
    from headstart.finetune.loop import Trainer
    from headstart.finetune.network import ClassifierNetwork, training_memory_format
    from headstart.finetune.settings import LoopSettings
    from headstart.models.preprocess import normalize

    size, batch, steps = (64, 8, 2) if smoke else (224, 64, 15)
    recipe = resolve_recipe(ExtractOptions("resnet18", "none"))
    device, precision = recipe.device, recipe.precision
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)

    def trainer(lr: float, train_bn: bool = False) -> Trainer:
        torch.manual_seed(0)
        features = build_feature_model(recipe.backbone).module
        network = ClassifierNetwork(
            features,
            nn.Linear(512, 10),
            recipe.preprocess,
            training_memory_format(device, precision),
        )
        unused = LabelledImages(["unused"], [0], recipe.preprocess)
        settings = LoopSettings(
            batch_size=batch, precision=precision, lr=lr, warmup=0.0, train_bn=train_bn, workers=0
        )
        return Trainer(network, unused, unused, settings, Path(tempfile.mkdtemp()), device)

    # Random weights: BatchNorm must use batch statistics for the loss to fall quickly.
    fitting = trainer(lr=1e-3, train_bn=True)
    losses = [fitting.train_step(pixels, labels) for _ in range(10)]
    learns = losses[-1] < 0.5 * losses[0]
    print(
        f"\nfine-tuning on {device} ({precision}): loss on a repeated batch "
        f"{losses[0]:.3f} -> {losses[-1]:.3f} (target: below half)"
    )
    plain = torchvision.models.resnet18(num_classes=10).to(device)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)

    def plain_step(batch_pixels: torch.Tensor, batch_labels: torch.Tensor) -> float:
        plain.train()
        images = normalize(batch_pixels.to(device), recipe.preprocess)
        loss = nn.functional.cross_entropy(plain(images), batch_labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    timed = trainer(lr=1e-4)
    rates = {}
    for name, step in (("plain fp32 loop", plain_step), ("headstart", timed.train_step)):
        for _ in range(2):
            step(pixels, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step(pixels, labels)  # both return a Python float: the step has finished
        rates[name] = steps * batch / (time.perf_counter() - started)
        print(f"  {name:16s} {rates[name]:8.1f} images/s (resnet18, {size} px, batch {batch})")
    print(f"  ratio headstart / plain: {rates['headstart'] / rates['plain fp32 loop']:.2f}x")
    return learns


# The image-text path: an open_clip backbone, its text tower, zero-shot heads and text search.
CLIP_K = 10
CLIP_QUERIES = ("a photo of a dog", "a church in a town", "a fish held by a man", "a red truck")


@dataclass
class ClipSide:
    """One device's run of the image-text path over the same images."""

    device: str
    precision: str
    embeddings: np.ndarray  # one row per image, in the order given
    images_per_second: float  # end to end: model build, decoding, embedding, writing
    steady_per_second: float  # without the first batch
    head: ZeroShotHead
    queries: np.ndarray  # one text embedding per query in CLIP_QUERIES
    found: list[list[str]] | None  # the paths text search returns, per query; None without FAISS


def clip_missing() -> dict[str, str]:
    """The packages of the image-text path this machine cannot import, and why."""
    missing = {}
    for name in ("open_clip", "faiss"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # not installed, or installed against another torch or numpy
            missing[name] = first_line(exc)
    return missing


def clip_sample(data: Path, count: int) -> tuple[list[Path], list[str]]:
    """``count`` images spread over every class folder of ``data``, and all the class names."""
    images = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    step = max(1, len(images) // count)
    return [p.absolute() for p in images[::step][:count]], sorted({p.parent.name for p in images})


def clip_side(
    model: str,
    device: str,
    precision: str,
    paths: list[Path],
    classes: list[str],
    args: argparse.Namespace,
    work: Path,
    search: bool,
) -> ClipSide:
    """Embed ``paths`` on ``device`` at ``precision``, build the zero-shot head of ``classes``,
    encode the queries and search an index of the images, as a user's commands would."""
    from headstart.classify.zeroshot import zeroshot_head
    from headstart.extract.text import TextEncoder, encode_texts
    from headstart.search.text import text_neighbors

    cache = work / f"clip-{device}-{precision}"
    manifest = work / "clip-images.txt"
    manifest.write_text("".join(f"{p}\n" for p in paths))
    cpu = device == "cpu"
    options = ExtractOptions(
        model=model,
        weights=args.clip_weights,
        device=device,
        precision=precision,
        store_dtype="float32" if cpu else "float16",
        batch_size=16 if cpu else 64,
        compile=False if cpu else None,
        workers=args.workers,
    )
    started = time.perf_counter()
    summary = extract([str(manifest)], options, cache)
    rate = len(paths) / (time.perf_counter() - started)
    fingerprint = summary.fingerprint
    embeddings = EmbeddingCache(cache).open(fingerprint).load_files([str(p) for p in paths])
    encoder = TextEncoder.from_fingerprint(fingerprint, device=device)
    head = zeroshot_head(classes, fingerprint, cache, args.clip_prompts, encoder=encoder)
    queries = encode_texts(list(CLIP_QUERIES), fingerprint, cache, encoder=encoder)
    found = None
    if search:
        loaded = clip_index(embeddings, paths, fingerprint, cache / "index")
        # The queries are in the text cache now: text search reads them back, as a rerun would.
        hits = text_neighbors(loaded, list(CLIP_QUERIES), cache, k=CLIP_K, device=device)
        found = [[h.path for h in hits if h.query == f"text:{q}"] for q in CLIP_QUERIES]
    used = fingerprint.recipe["precision"]
    steady = summary.steady_images_per_second
    return ClipSide(device, used, embeddings, rate, steady, head, queries, found)


def clip_index(embeddings: np.ndarray, paths: list[Path], fingerprint, directory: Path):
    """A saved and reloaded index of the images, as ``headstart index`` makes one."""
    from headstart.cache.keys import file_key
    from headstart.search.build import build_index
    from headstart.search.spec import choose_spec
    from headstart.search.store import load_index, save_index

    index, spec, recall = build_index(embeddings, choose_spec(*embeddings.shape))
    save_index(
        directory,
        index,
        spec,
        recall,
        fingerprint=fingerprint,
        paths=[str(p) for p in paths],
        labels=[p.parent.name for p in paths],
        keys=[file_key(str(p)) for p in paths],
    )
    return load_index(directory)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def report_cpu(side: ClipSide, paths: list[Path]) -> None:
    """What the CPU run gave: its rate, zero-shot accuracy and the first query's best hits."""
    accuracy = float(np.mean(side.head.predict(side.embeddings) == [p.parent.name for p in paths]))
    print(
        f"  cpu fp32: {len(paths)} images at {side.images_per_second:.1f} img/s end to end, "
        f"{side.embeddings.shape[1]}-d; zero-shot over {len(side.head.classes_)} classes "
        f"{accuracy:.1%} right"
    )
    if side.found is not None:
        top = ", ".join(Path(p).parent.name for p in side.found[0][:3])
        print(f"  text search {CLIP_QUERIES[0]!r}: top 3 from the classes {top}")


def compare_sides(gpu: ClipSide, cpu: ClipSide, random_weights: bool) -> bool:
    """CUDA against CPU fp32: image and text embeddings, zero-shot predictions, text search."""
    images = row_cosines(gpu.embeddings, cpu.embeddings)
    weights = row_cosines(gpu.head.coef_, cpu.head.coef_)
    queries = row_cosines(gpu.queries, cpu.queries)
    same_classes = list(gpu.head.classes_) == list(cpu.head.classes_)
    agree = float(np.mean(gpu.head.predict(gpu.embeddings) == cpu.head.predict(cpu.embeddings)))
    print(
        f"  {gpu.device} ({gpu.precision}): {gpu.images_per_second:.1f} img/s end to end "
        f"({gpu.steady_per_second:.1f} steady state)\n"
        f"  image cosine vs CPU fp32 over {len(images)} images: min {images.min():.5f} "
        f"mean {images.mean():.5f} (target >= 0.99)\n"
        f"  zero-shot class weights: min cosine {weights.min():.5f} over "
        f"{len(weights)} classes; query embeddings: min cosine {queries.min():.5f} "
        f"(target >= 0.99)\n"
        f"  zero-shot predictions agree on {agree:.1%} of images (target >= 95%)"
    )
    ok = images.min() >= 0.99 and weights.min() >= 0.99 and queries.min() >= 0.99
    ok = ok and same_classes
    ranked = agree >= 0.95
    if gpu.found is not None and cpu.found is not None:
        pairs = zip(gpu.found, cpu.found, strict=True)
        overlap = np.array([len(set(a) & set(b)) / max(len(b), 1) for a, b in pairs])
        print(
            f"  text search overlap@{CLIP_K} with the CPU: mean {overlap.mean():.2f} "
            f"min {overlap.min():.2f} over {len(overlap)} queries (target mean >= 0.8)"
        )
        ranked = ranked and overlap.mean() >= 0.8
    if random_weights and not ranked:
        # Random towers put images and classes close together: rankings near-tie, so rounding
        # reorders them. The cosines above are the check then; the rankings are for the record.
        print("  (random weights: near-tied rankings, agreement and overlap not held to target)")
        return bool(ok)
    return bool(ok and ranked)


def clip_check(args: argparse.Namespace) -> bool:
    """The image-text path on CUDA (``auto`` precision) against the CPU at fp32."""
    model = f"open_clip:{args.clip}"
    print(f"\n{model} (weights {args.clip_weights}), image-text path")
    missing = clip_missing()
    if "open_clip" in missing:
        print(f"  not checked: no usable open_clip ({missing['open_clip']})")
        return True
    if "faiss" in missing:
        print(f"  text search not checked: no usable faiss ({missing['faiss']})")
    search = "faiss" not in missing
    paths, classes = clip_sample(args.data, args.clip_images)
    with tempfile.TemporaryDirectory(prefix="headstart-clip-") as tmp:
        work = Path(tmp)
        try:
            cpu = clip_side(model, "cpu", "fp32", paths, classes, args, work, search)
            report_cpu(cpu, paths)
            if not torch.cuda.is_available():
                print("  CUDA against CPU: no CUDA: skipped")
                return True
            gpu = clip_side(model, "cuda", "auto", paths, classes, args, work, search)
        except HeadstartError as exc:  # e.g. --clip-weights DEFAULT on a machine offline
            print(f"  FAIL: {first_line(exc)}")
            return False
    return compare_sides(gpu, cpu, random_weights=args.clip_weights == "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", default="resnet50,vit_b_16,resnet18")
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--cpu-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="Tiny run on the CPU.")
    parser.add_argument(
        "--no-compile-check",
        dest="compile_check",
        action="store_false",
        help="Skip the compiled run of the first model.",
    )
    parser.add_argument(
        "--clip",
        default="ViT-B-32",
        help="open_clip architecture of the image-text check ('none' skips it).",
    )
    parser.add_argument(
        "--clip-weights",
        default="none",
        help="Its --weights: none (random init, offline), DEFAULT, or a local checkpoint file.",
    )
    parser.add_argument("--clip-images", type=int, default=512, help="Images it embeds.")
    parser.add_argument(
        "--clip-prompts",
        default="simple",
        help="Zero-shot templates: simple (7), openai (80), or a file.",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("no CUDA device: run this on a GPU machine (or pass --smoke to test the script)")
    if args.smoke:
        args.copies, args.cpu_images, args.rounds, args.clip_images = 1, 8, 1, 16
    print(
        f"torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
        f"{os.cpu_count()} CPU cores"
    )
    with tempfile.TemporaryDirectory(prefix="headstart-gpu-") as tmp:
        work = Path(tmp)
        data = args.data
        if args.smoke:
            data = work / "subset"
            for path in sorted(args.data.rglob("*.JPEG"))[:24]:
                (data / path.parent.name).mkdir(parents=True, exist_ok=True)
                (data / path.parent.name / path.name).symlink_to(path.resolve())
        started = time.perf_counter()
        paths = make_collection(data, work / "collection", args.copies)
        print(f"wrote {len(paths)} images in {time.perf_counter() - started:.1f} s")
        models = args.models.split(",")
        results = [
            check(m, work / "collection", paths, args, work, first=m == models[0]) for m in models
        ]
        results.append(decode_check(data, args.smoke))
    results.append(heads_check(args.smoke))
    results.append(finetune_check(args.smoke))
    if args.clip != "none":
        results.append(clip_check(args))
    print("\nPASS" if all(results) else "\nFAIL")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
