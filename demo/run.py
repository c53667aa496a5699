"""The demo: transfer learning end to end, offline, through the commands a user types.

    python demo/run.py [--out demo/out] [--backbone auto|torchvision|own]

1. A pretrained backbone. torchvision's ImageNet resnet18 when its weights can be had (network,
   or ``$TORCH_HOME``); otherwise one made here, honestly: a small CNN trained on handwritten
   digits 0-4 (the source task), kept in ``OUT/pretrained`` so the next run skips it.
2. The target task has other classes: digits 5-9, with few labelled images per class.
3. Probes on cached embeddings of the random-init and of the pretrained backbone, nearest
   neighbors, fine-tuning from the probe (LP-FT), and a probe on the fine-tuned backbone's
   re-cached embeddings; every head scored on a test split that nothing was chosen on.

It ends with a table of those numbers, also written to ``OUT/results.json``. About two minutes
on two cores, pretraining included.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEMO = Path(__file__).resolve().parent
HEADSTART = Path(sys.executable).with_name("headstart")


# Few labels per class, where transfer learning pays; validation chooses C and the fine-tuned
# epoch; everything is scored on the rest (about 500 test images).
TRAIN_PER_CLASS, VAL_PER_CLASS = 60, 20
PRETRAIN_EPOCHS = 6


@dataclass(frozen=True)
class Backbone:
    """The model options of the pretrained backbone and of its random-init twin."""

    description: str
    model: list[str]
    pretrained: list[str]
    random: list[str]
    finetune: list[str]


def torchvision_weights_available() -> bool:
    from headstart.models import get_backbone
    from headstart.models.backbones import WeightsUnavailable

    try:
        get_backbone("resnet18", "DEFAULT").weights.ensure_available()
    except WeightsUnavailable as exc:
        print(f"torchvision's pretrained resnet18 cannot be had here ({str(exc).split(';')[0]})")
        return False
    return True


def torchvision_backbone() -> Backbone:
    return Backbone(
        description="torchvision resnet18, ImageNet weights",
        model=["--model", "resnet18", "--resize", "64", "--crop", "64"],
        pretrained=["--weights", "DEFAULT"],
        random=["--weights", "none"],
        # resnet18 trains at about 40 images/s on two cores: 4 epochs keep the demo short.
        finetune=["--epochs", "4", "--lr", "1e-4", "--head-lr-mult", "1", "--batch-size", "16"],
    )


def own_backbone(out: Path, images: Path) -> Backbone:
    """The digits CNN pretrained on digits 0-4, trained now unless an earlier run did."""
    checkpoint = out / "pretrained" / "digits_0to4.pt"
    if checkpoint.is_file():
        print(f"pretrained backbone: {checkpoint} (an earlier run made it; delete it to redo)")
    else:
        print("== pretraining a backbone on the source task: digits 0-4")
        command = [sys.executable, str(DEMO / "pretrain.py"), str(images), str(checkpoint)]
        command += ["--epochs", str(PRETRAIN_EPOCHS)]
        run(command, shown="python demo/pretrain.py")
    pixels = ["--resize", "32", "--crop", "32", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    return Backbone(
        description="small CNN pretrained here on digits 0-4",
        model=["--model", f"{DEMO / 'digits_net.py'}:digits_cnn", *pixels],
        pretrained=["--weights", str(checkpoint)],
        random=["--weights", "none"],
        # A low learning rate for every layer: AdamW's first steps move each weight by about
        # the learning rate, and at 1e-4 that already undoes much of this small network's
        # pretraining before fine-tuning recovers.
        finetune=["--epochs", "10", "--lr", "3e-5", "--head-lr-mult", "1", "--batch-size", "16"],
    )


def run(command: list[str], shown: str | None = None) -> None:
    """Run one command as a user would, showing it first; stop the demo if it fails."""
    words = [*(shown.split() if shown else ["headstart"]), *command[2 if shown else 1 :]]
    print("$ " + shlex.join(_short(word) for word in words), flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"demo stopped: that command failed ({' '.join(words[:2])})")


def headstart(*args: str | Path) -> None:
    run([str(HEADSTART), *(str(a) for a in args)])


def _short(word: str) -> str:
    return word.replace(str(Path.cwd()) + "/", "")


def score(head: Path, test: Path, cache: Path, metrics: Path) -> None:
    """Score a saved head on the test images, keeping its metrics for the final table."""
    headstart("evaluate", head, test, "--cache", cache, "-q", "--json", metrics)


def accuracy(metrics: Path) -> float:
    return float(json.loads(metrics.read_text())["accuracy"])


def neighbor_agreement(index: Path, queries: Path, cache: Path, k: int) -> float:
    """The share of the k nearest neighbors of each query image that are of its class."""
    from headstart.search.query import query_index

    _, found = query_index(index, cache, sources=[str(queries)], k=k)
    same = [Path(n.query).parent.name == n.label for n in found]
    return sum(same) / len(same)


def main(out: Path, use_torchvision: bool | None = None) -> dict[str, float]:
    started = time.perf_counter()
    images, cache = out / "images", out / "cache"
    if not (images / "target").is_dir():
        run(
            [
                sys.executable,
                str(DEMO / "digits.py"),
                str(images),
                "--train-per-class",
                str(TRAIN_PER_CLASS),
                "--val-per-class",
                str(VAL_PER_CLASS),
            ],
            shown="python demo/digits.py",
        )
    train, val, test = (images / "target" / split for split in ("train", "val", "test"))
    if use_torchvision is None:
        use_torchvision = torchvision_weights_available()
    backbone = torchvision_backbone() if use_torchvision else own_backbone(out, images)
    model = [*backbone.model, "--cache", cache, "-q"]
    pretrained, random = [*model, *backbone.pretrained], [*model, *backbone.random]
    heads, scores = out / "heads", out / "scores"
    scores.mkdir(parents=True, exist_ok=True)
    # C chosen on validation; no refit, so fine-tuning can still be validated on unseen images.
    probe = ["--val", val, "--head", "logreg", "--sweep", "--no-refit"]

    print(f"\n== target task: digits 5-9, {TRAIN_PER_CLASS} labelled images per class")
    print(f"== embed every target image once with the pretrained backbone ({backbone.description})")
    headstart("extract", images / "target", *pretrained)
    print("== a linear probe on the cached embeddings (C chosen on validation), scored on test")
    headstart("train", train, *pretrained, *probe, "--plot", "-o", heads / "pretrained")
    score(heads / "pretrained", test, cache, scores / "pretrained.json")
    print("== the same probe on a random-init backbone: what pretraining is worth")
    headstart("train", train, *random, *probe, "-o", heads / "random")
    score(heads / "random", test, cache, scores / "random.json")
    first = sorted((test / "digit_7").iterdir())[0]
    headstart("predict", heads / "pretrained", first, "--cache", cache, "--top-k", "2", "-q")

    print("== fine-tuning end to end, starting from the probe (LP-FT)")
    tuned = out / "finetune"
    run_args = [*backbone.finetune, "--patience", "0"]
    run_args += ["--augment", "none"]  # the standard flips would turn digits into other shapes
    shutil.rmtree(tuned, ignore_errors=True)  # a fresh run each time, not a resume
    headstart(
        "finetune",
        train,
        *pretrained,
        "--val",
        val,
        "--head",
        heads / "pretrained",
        *run_args,
        "-o",
        tuned,
    )
    score(tuned / "head", test, cache, scores / "finetuned.json")
    print("== the fine-tuned backbone's embeddings, cached, and a new probe on them")
    recached = [*model, "--weights", tuned / "backbone.pt"]
    headstart("extract", images / "target", *recached)
    headstart("train", train, *recached, *probe, "-o", heads / "recached")
    score(heads / "recached", test, cache, scores / "recached.json")
    print("== nearest neighbors among the labelled images, by the fine-tuned embeddings")
    headstart("index", "build", train, val, *recached, "-o", out / "index")
    headstart("knn", out / "index", first, "-k", "5", "--cache", cache, "-q")

    results = {
        "backbone": backbone.description,
        "random_probe": accuracy(scores / "random.json"),
        "pretrained_probe": accuracy(scores / "pretrained.json"),
        "lp_ft": accuracy(scores / "finetuned.json"),
        "recached_probe": accuracy(scores / "recached.json"),
        "neighbors_same_class": neighbor_agreement(out / "index", test, cache, k=5),
        "test_images": json.loads((scores / "random.json").read_text())["n"],
        "classes": sum(1 for folder in test.iterdir() if folder.is_dir()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, out)
    return results


def print_table(results: dict, out: Path) -> None:
    rows = [
        ("random-init probe", results["random_probe"]),
        ("pretrained probe", results["pretrained_probe"]),
        ("LP-FT (fine-tuned from the probe)", results["lp_ft"]),
        ("probe on re-cached embeddings", results["recached_probe"]),
    ]
    print(f"\n== transfer learning on digits 5-9 ({results['backbone']})")
    print(f"{'':36}test accuracy ({results['test_images']} images)")
    for name, value in rows:
        print(f"{name:36}{value:.3f}")
    share, chance = results["neighbors_same_class"], 1 / results["classes"]
    print(f"{'of 5 nearest neighbors, same class':36}{share:.3f} (chance {chance:.2f})")
    print(f"done in {results['seconds']:.0f} s. Look at:")
    for path, what in (
        ("heads/pretrained/confusion.png", "the probe's confusion matrix"),
        ("heads/pretrained/embedding_map.png", "the cached embeddings, coloured by class"),
        ("finetune/learning_curve.png", "fine-tuning, epoch by epoch (metrics.jsonl)"),
        ("results.json", "these numbers"),
    ):
        print(f"  {_short(str(out / path)):44} {what}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo/out"))
    parser.add_argument(
        "--backbone",
        choices=["auto", "torchvision", "own"],
        default="auto",
        help="auto: torchvision's pretrained resnet18 when its weights can be had",
    )
    args = parser.parse_args()
    choice = {"auto": None, "torchvision": True, "own": False}[args.backbone]
    main(args.out, choice)
