"""``headstart audit`` measured on planted problems in real photos.

The corpus is /work/shared/data/imagenette-mini (1,500 ImageNet photos of 10 classes, train and
val), copied, with problems planted whose answers are known:

* exact copies: training photos copied into val under new names (the audit must find 100%);
* near-copies: training photos saved into val resized to half, re-encoded at JPEG quality 60,
  or cropped by 10% (target: at least 95% found over the near-duplicate threshold);
* flipped labels: 10% of the other photos moved to a wrong class folder.

The backbone is a small CNN (bench/audit_net.py) trained here for a few minutes on the train
photos at 64 pixels with their true labels, before any label is flipped: the offline stand-in for
an ImageNet backbone (which has also seen these photos' classes). Flips in val were never seen by
it, so the label-error figures are given for val apart too.

Printed: recall of planted exact copies; recall of near-copies by kind at the default threshold,
with the similarity of each kind beside the closest pairs of different photos; precision and
recall of flipped labels for the audit's search beside cleanlab's own ``find_label_issues``
(default settings) on the same out-of-fold probabilities.

    python bench/audit_planted.py [--data /work/shared/data/imagenette-mini] [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_net import PhotoNet

from headstart.audit.duplicates import exact_duplicates
from headstart.audit.labels import out_of_fold_probabilities, rank_label_issues
from headstart.audit.near import near_duplicates
from headstart.audit.settings import DEFAULT_NEAR_THRESHOLD, LabelSearch, NearSearch
from headstart.audit.sources import embed_audit_sources
from headstart.extract import ExtractOptions, PreprocessOverrides

BENCH = Path(__file__).resolve().parent
SIZE, LOAD = 64, 72  # the network's input, and the side photos are kept at for random crops
MEAN = STD = 0.5
COPIES, NEAR_PER_KIND, FLIP_FRACTION = 30, 30, 0.10
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _square(path: Path, side: int) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = side / min(image.size)
        w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        image = image.resize((w, h), Image.BILINEAR)
        left, top = (w - side) // 2, (h - side) // 2
        return np.asarray(image.crop((left, top, left + side, top + side)))


def train_backbone(train: Path, out: Path, epochs: int, seed: int) -> None:
    """Train PhotoNet on the class folders under ``train`` and save its state dict."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in photos(train / name)]
    pixels = torch.from_numpy(np.stack([_square(f, LOAD) for f, _ in files])).permute(0, 3, 1, 2)
    labels = torch.tensor([c for _, c in files])
    model = PhotoNet(len(classes))
    optimiser = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    batch = 64
    steps = epochs * -(-len(files) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.1, total_steps=steps)
    began = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for rows in torch.randperm(len(files), generator=generator).split(batch):
            loss = nn.functional.cross_entropy(
                model(_augment(pixels[rows], generator)), labels[rows]
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(rows)
        print(f"  backbone epoch {epoch + 1}/{epochs}: loss {total / len(files):.3f}", flush=True)
    _recalibrate(model, pixels)
    torch.save({"state_dict": model.state_dict(), "classes": classes}, out)
    print(f"  trained on {len(files)} photos in {time.perf_counter() - began:.0f} s")


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - MEAN) / STD


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random crop of 60-100% of the side, resized to SIZE, and random mirroring: the
    network learns to see a cropped or rescaled photo as the same photo."""
    side = int(torch.randint(int(0.6 * LOAD), LOAD + 1, (1,), generator=generator))
    top, left = (int(torch.randint(0, LOAD - side + 1, (1,), generator=generator)) for _ in "ab")
    crop = _normalise(pixels[:, :, top : top + side, left : left + side])
    crop = nn.functional.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    flip = torch.rand(len(crop), generator=generator) < 0.5
    crop[flip] = crop[flip].flip(-1)
    return crop


@torch.no_grad()
def _recalibrate(model: nn.Module, pixels: torch.Tensor) -> None:
    """Exact BatchNorm statistics over the centre crops the embeddings will see."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    offset = (LOAD - SIZE) // 2
    for chunk in pixels.split(256):
        model(_normalise(chunk[:, :, offset : offset + SIZE, offset : offset + SIZE]))
    model.eval()


def plant(data: Path, corpus: Path, seed: int) -> dict:
    """Copy ``data`` to ``corpus`` and plant copies, near-copies and flipped labels."""
    rng = np.random.default_rng(seed)
    shutil.copytree(data / "train", corpus / "train")
    shutil.copytree(data / "val", corpus / "val")
    originals = photos(corpus / "train")
    chosen = [originals[i] for i in rng.permutation(len(originals))[: COPIES + 3 * NEAR_PER_KIND]]
    planted: dict = {"exact": [], "half": [], "quality60": [], "crop10": []}
    for i, original in enumerate(chosen):
        folder = corpus / "val" / original.parent.name
        if i < COPIES:
            copy = folder / f"planted_copy_{i:03d}.JPEG"
            shutil.copyfile(original, copy)
            planted["exact"].append((str(original), str(copy)))
            continue
        kind = ("half", "quality60", "crop10")[(i - COPIES) // NEAR_PER_KIND]
        copy = folder / f"planted_{kind}_{i:03d}.JPEG"
        with Image.open(original) as image:
            image = image.convert("RGB")
            if kind == "half":
                image.resize((image.width // 2, image.height // 2), Image.BICUBIC).save(copy)
            elif kind == "quality60":
                image.save(copy, quality=60)
            else:  # 10% off the area's sides: 5% from each edge
                dx, dy = image.width // 20, image.height // 20
                image.crop((dx, dy, image.width - dx, image.height - dy)).save(copy)
        planted[kind].append((str(original), str(copy)))
    involved = {p for pairs in planted.values() for pair in pairs for p in pair}
    candidates = [p for p in photos(corpus) if str(p) not in involved]
    flips = rng.permutation(len(candidates))[: round(FLIP_FRACTION * len(candidates))]
    classes = sorted(p.name for p in (corpus / "train").iterdir())
    planted["flipped"] = []
    for i in flips.tolist():
        photo = candidates[i]
        wrong = rng.choice([c for c in classes if c != photo.parent.name])
        moved = photo.parent.parent / wrong / photo.name
        photo.rename(moved)
        planted["flipped"].append(str(moved))
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/imagenette-mini"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="Build the corpus here and keep it.")
    parser.add_argument("--reuse", type=Path, help="Measure again on a kept corpus.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="headstart-audit-planted-") as tmp:
        root = args.reuse or args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        checkpoint = root / "photo_cnn.pt"
        if args.reuse:
            planted = json.loads((root / "planted.json").read_text())
        else:
            print("== training the backbone on the train photos (true labels)")
            train_backbone(args.data / "train", checkpoint, args.epochs, args.seed)
            planted = plant(args.data, root / "corpus", args.seed)
            (root / "planted.json").write_text(json.dumps(planted))
        measure(root, checkpoint, planted)


def measure(root: Path, checkpoint: Path, planted: dict) -> None:
    options = ExtractOptions(
        model=f"{BENCH / 'audit_net.py'}:photo_cnn",
        weights=str(checkpoint),
        preprocess=PreprocessOverrides(SIZE, SIZE, (MEAN,) * 3, (STD,) * 3),
        device="cpu",
        precision="fp32",
    )
    sources = [str(root / "corpus" / "train"), str(root / "corpus" / "val")]
    began = time.perf_counter()
    embedded = embed_audit_sources(sources, options, root / "cache")
    print(f"== embedded {sum(map(len, embedded))} images in {time.perf_counter() - began:.0f} s")

    began = time.perf_counter()
    groups = [{item.path for item in g.items} for g in exact_duplicates(embedded)]
    found = sum(any({a, b} <= g for g in groups) for a, b in planted["exact"])
    print(f"exact copies: {found}/{len(planted['exact'])} found "
          f"({found / len(planted['exact']):.0%}); {len(groups)} groups in all, "
          f"{time.perf_counter() - began:.2f} s")  # fmt: skip

    kinds = ("half", "quality60", "crop10")
    wanted = {kind: [frozenset(pair) for pair in planted[kind]] for kind in kinds}
    every = {pair for pairs in wanted.values() for pair in pairs}
    for centre in (True, False):
        began = time.perf_counter()
        pairs = near_duplicates(embedded, NearSearch(-1.0, neighbours=4, centre=centre))
        seconds = time.perf_counter() - began
        similarity = {frozenset((p.first.path, p.second.path)): p.similarity for p in pairs}
        others = np.array([s for pair, s in similarity.items() if pair not in every])
        how = "centred" if centre else "raw"
        print(f"near-copies, cosine of {how} embeddings ({seconds:.2f} s):")
        found = 0
        for kind in kinds:
            sims = np.array([similarity.get(pair, -1.0) for pair in wanted[kind]])
            hit = int((sims >= DEFAULT_NEAR_THRESHOLD).sum())
            found += hit
            print(f"  {kind:<10} {hit}/{len(sims)} over {DEFAULT_NEAR_THRESHOLD}; similarity "
                  f"min {sims.min():.3f}, median {np.median(sims):.3f}")  # fmt: skip
        over = int((others >= DEFAULT_NEAR_THRESHOLD).sum())
        print(f"  recall {found / len(every):.1%}, precision {found / max(found + over, 1):.1%} "
              f"({over} pairs of different photos over the threshold)")  # fmt: skip
        print("  different photos, the closest: " + ", ".join(f"{s:.3f}" for s in
              np.sort(others)[::-1][:5]))  # fmt: skip
        for threshold in (0.8, 0.85, 0.9, 0.95):
            recall = np.mean([similarity.get(pair, -1.0) >= threshold for pair in every])
            print(f"    at {threshold}: recall {recall:.1%}, "
                  f"{int((others >= threshold).sum())} other pairs over")  # fmt: skip

    print("flipped labels (10% of the photos not involved in copies):")
    for C in (0.01, 0.1):
        search = LabelSearch(C=C)
        began = time.perf_counter()
        pool = out_of_fold_probabilities(embedded, search)
        seconds = time.perf_counter() - began
        paths = np.array(
            [embedded[s].data.paths[r] for s, r in zip(pool.source, pool.row, strict=True)]
        )
        val = np.char.startswith(paths, sources[1])
        truth = np.isin(paths, list(planted["flipped"]))
        accuracy = np.mean(pool.probabilities.argmax(1) == pool.y)
        print(f"  C={C:g}: out-of-fold accuracy {accuracy:.1%} ({seconds:.1f} s)")
        from cleanlab.filter import find_label_issues

        rows = {
            f"audit ({search.filter_by}, ranked)": rank_label_issues(pool, search.filter_by),
            "cleanlab find_label_issues, defaults": np.flatnonzero(
                find_label_issues(labels=pool.y, pred_probs=pool.probabilities)
            ),
        }
        for name, flagged in rows.items():
            hit = np.zeros(len(paths), bool)
            hit[flagged] = True
            line = []
            for where, mask in (("all", np.ones_like(val)), ("val only", val)):
                tp = int((hit & truth & mask).sum())
                precision = tp / max(int((hit & mask).sum()), 1)
                recall = tp / max(int((truth & mask).sum()), 1)
                line.append(f"{where}: precision {precision:.1%} recall {recall:.1%}")
            print(f"    {name:<38} {len(flagged):4d} flagged; " + "; ".join(line))


if __name__ == "__main__":
    main()
