"""Fine-tuning throughput: headstart's training step against a plain PyTorch loop, side by side.

Model: resnet18 (random init, so no download) at 224 px with a 10-class classifier.
Data: imagenette-mini train images, decoded and centre-cropped once into memory, so both sides
train on the very same uint8 batches and the timing is the training step alone.

Baseline: the textbook loop: ``model.train()``, fp32, NCHW, SGD (momentum 0.9), no autocast.
headstart: ``Trainer.train_step`` with its defaults (AdamW, BatchNorm in inference mode and
folded into the convolutions, autocast where the CPU has native bf16, the memory format it
picks for the device). The two alternate, a few steps at a time, so drifting clock speeds hit
both alike; the rates are medians over rounds.

    python bench/finetune.py [--batch 32] [--images 96] [--rounds 3] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from headstart.extract import ExtractOptions, resolve_recipe
from headstart.finetune.data import LabelledImages
from headstart.finetune.loop import Trainer
from headstart.finetune.network import ClassifierNetwork, training_memory_format
from headstart.finetune.settings import LoopSettings
from headstart.models.features import build_feature_model
from headstart.models.preprocess import normalize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini" / "train"


def load_batches(images: int, batch: int, preprocess) -> list[tuple[torch.Tensor, torch.Tensor]]:
    classes = sorted(p.name for p in DATA.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((DATA / c).glob("*"))]
    files = files[:: max(len(files) // images, 1)][:images]
    dataset = LabelledImages([str(f) for f, _ in files], [i for _, i in files], preprocess)
    pixels = torch.stack([dataset[i].pixels for i in range(len(dataset))])
    labels = torch.tensor([i for _, i in files])
    return [(pixels[i : i + batch], labels[i : i + batch]) for i in range(0, len(files), batch)]


class PlainLoop:
    def __init__(self, preprocess) -> None:
        torch.manual_seed(0)
        self.model = torchvision.models.resnet18(num_classes=10)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.preprocess = preprocess

    def step(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.train()
        images = normalize(pixels, self.preprocess)
        loss = nn.functional.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def headstart_trainer(batch: int, memory_format: torch.memory_format | None, workdir: Path):
    recipe = resolve_recipe(ExtractOptions("resnet18", "none", device="cpu"))
    features = build_feature_model(recipe.backbone).module
    fmt = memory_format or training_memory_format(recipe.device, recipe.precision)
    network = ClassifierNetwork(features, nn.Linear(512, 10), recipe.preprocess, fmt)
    empty = LabelledImages(["unused"], [0], recipe.preprocess)
    settings = LoopSettings(batch_size=batch, precision=recipe.precision, workers=0)
    trainer = Trainer(network, empty, empty, settings, workdir, recipe.device)
    return trainer, recipe.precision, fmt


def rate(step, batches, steps: int) -> float:
    started = time.perf_counter()
    images = 0
    for i in range(steps):
        pixels, labels = batches[i % len(batches)]
        step(pixels, labels)
        images += len(labels)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="Steps per side per round.")
    parser.add_argument(
        "--also-channels-last", action="store_true", help="Also time headstart in channels_last."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        trainer, precision, fmt = headstart_trainer(args.batch, None, Path(workdir))
        batches = load_batches(args.images, args.batch, trainer.network.preprocess)
        plain = PlainLoop(trainer.network.preprocess)
        sides = {"plain fp32 loop": plain.step, "headstart": trainer.train_step}
        if args.also_channels_last and fmt != torch.channels_last:
            extra, _, _ = headstart_trainer(args.batch, torch.channels_last, Path(workdir))
            sides["headstart, channels_last"] = extra.train_step
        print(
            f"resnet18 224 px, batch {args.batch}, {len(batches)} distinct batches; torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; headstart precision "
            f"{precision}, {str(fmt).split('.')[-1]}, folded BatchNorm "
            f"{trainer.folded_batchnorm}"
        )
        for step in sides.values():
            rate(step, batches, 1)  # warm-up: allocator, oneDNN primitive caches
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, step in sides.items():
                rates[name].append(rate(step, batches, args.steps))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        for name, value in medians.items():
            rounds = ", ".join(f"{v:.2f}" for v in rates[name])
            print(f"{name:28s} {value:7.2f} images/s  (rounds: {rounds})")
        base = medians["plain fp32 loop"]
        for name, value in medians.items():
            if name != "plain fp32 loop":
                print(f"ratio {name} / plain loop: {value / base:.2f}x")


if __name__ == "__main__":
    main()
