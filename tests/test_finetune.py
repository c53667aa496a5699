"""Fine-tuning: LP-FT start, BatchNorm and freezing, learning rates, resume, and a real gain.

The transfer task is built here: a small CNN is pretrained on the colour of striped images,
then fine-tuned to tell the stripes' orientation, which its frozen 4-wide embedding barely
encodes. Everything runs on CPU in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import BF16_UNIT_ROUNDOFF, PRECISIONS, TINY_MODELS
from PIL import Image
from torch import nn

from headstart.cli import main

COLOURS = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 220]])
ORIENTATIONS = ("horizontal", "vertical")
MODEL = f"{TINY_MODELS}:stripes_features"
SLOW_MODEL = f"{TINY_MODELS}:slow_stripes_features"
PIXELS = ["--resize", "32", "--crop", "32", "--mean", "0,0,0", "--std", "1,1,1"]


def stripes(count: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy striped images: (uint8 NHWC pixels, colour index, orientation index)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size, 3), np.uint8)
    colour = rng.integers(0, 3, count)
    orientation = rng.integers(0, 2, count)
    rows, cols = np.mgrid[0:size, 0:size]
    for i in range(count):
        period = int(rng.integers(4, 8))
        coordinate = rows if orientation[i] == 0 else cols
        mask = ((coordinate + rng.integers(0, period)) // (period // 2)) % 2 == 0
        image = rng.integers(0, 60, (size, size, 3))
        image[mask] = COLOURS[colour[i]] + rng.integers(-20, 20, 3)
        images[i] = np.clip(image, 0, 255)
    return images, colour, orientation


def write_orientation_folder(root: Path, count: int, seed: int) -> Path:
    images, _, orientation = stripes(count, seed)
    for i, (pixels, label) in enumerate(zip(images, orientation, strict=True)):
        path = root / ORIENTATIONS[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    """The stripes CNN pretrained on colour (the "large dataset" of this test), saved as
    weights files for the plain and the slow model forms, plus the orientation task's images."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_models", TINY_MODELS)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    torch.manual_seed(0)
    features = tiny.stripes_features()
    classifier = nn.Linear(4, 3)
    pooled = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier)
    images, colour, _ = stripes(600, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(colour)
    optimizer = torch.optim.Adam(pooled.parameters(), lr=1e-2)
    for _ in range(15):
        for batch in torch.randperm(len(x)).split(50):
            loss = nn.functional.cross_entropy(pooled(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    pooled.eval()
    with torch.no_grad():
        assert (pooled(x).argmax(1) == y).float().mean() > 0.95, "pretraining failed"
    root = tmp_path_factory.mktemp("finetune")
    state = features.state_dict()
    torch.save(state, root / "colour.pt")
    torch.save({f"body.{k}": v for k, v in state.items()}, root / "colour_slow.pt")
    return {
        "weights": root / "colour.pt",
        "slow_weights": root / "colour_slow.pt",
        "train": write_orientation_folder(root / "train", 240, seed=1),
        "val": write_orientation_folder(root / "val", 120, seed=2),
        "root": root,
    }


def finetune_args(
    data: dict[str, Path], out: Path, *extra: str, slow: bool = False, precision: str = "fp32"
) -> list:
    """The command line of a short fine-tuning run, at ``precision`` whatever the processor
    (``auto`` would be bf16 on CPUs with AVX512-BF16 or AMX, fp32 elsewhere)."""
    model, weights = (SLOW_MODEL, data["slow_weights"]) if slow else (MODEL, data["weights"])
    return [
        "finetune",
        str(data["train"]),
        "--val",
        str(data["val"]),
        "--model",
        model,
        "--weights",
        str(weights),
        *PIXELS,
        "--precision",
        precision,
        "--store-dtype",
        "float32",
        "--cache",
        str(data["root"] / "cache"),
        "-j",
        "0",
        "--batch-size",
        "16",
        "--augment",
        "none",
        "--lr",
        "1e-2",
        "--warmup",
        "0",
        "--patience",
        "0",
        "-q",
        "-o",
        str(out),
        *extra,
    ]


def invoke(args: list) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_network_at_step_zero_answers_as_the_linear_head(
    pretrained, tmp_path: Path, precision: str
) -> None:
    from headstart.classify.data import embed_sources
    from headstart.classify.linear import LogisticRegressionHead
    from headstart.extract import ExtractOptions, PreprocessOverrides, resolve_recipe
    from headstart.finetune.data import LabelledImages
    from headstart.finetune.loop import Trainer
    from headstart.finetune.network import (
        ClassifierNetwork,
        fold_linear_head,
        training_memory_format,
    )
    from headstart.finetune.settings import LoopSettings
    from headstart.models.features import build_feature_model

    # As `headstart finetune` does it: the probe on embeddings made at ``precision``, then the
    # network (the folded probe on the backbone) answering at that same precision.
    options = ExtractOptions(
        MODEL,
        str(pretrained["weights"]),
        preprocess=PreprocessOverrides(32, 32, (0, 0, 0), (1, 1, 1)),
        device="cpu",
        precision=precision,
        store_dtype="float32",
        workers=0,
    )
    data = embed_sources([str(pretrained["val"])], options, tmp_path / "cache")
    head = LogisticRegressionHead(C=10.0).fit(data.X, data.labels.astype(str))
    recipe = resolve_recipe(options)
    classifier = fold_linear_head(head)
    network = ClassifierNetwork(
        build_feature_model(recipe.backbone).module,
        classifier,
        recipe.preprocess,
        training_memory_format(recipe.device, precision),
    )
    images = LabelledImages(data.paths, [0] * len(data.paths), recipe.preprocess)
    settings = LoopSettings(precision=precision, workers=0)
    trainer = Trainer(network, images, images, settings, tmp_path, recipe.device)
    logits, _ = trainer.predict(images)  # what epoch 0 of a run scores
    expected = head.class_scores(data.X)
    predicted = head.classes_[logits.argmax(1)]
    assert expected.std() > 0.05  # a real head, not constant scores
    if precision == "fp32":
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
        assert (predicted == head.predict(data.X)).all()
        return
    # Under bf16 autocast the classifier layer multiplies bf16-rounded features by bf16-rounded
    # weights and rounds the logit: at most about 3 roundings of sum(|w| |x|) + |b|. The bound
    # is 4 (one more for features computed by other kernels than the cache's); measured 0.33.
    weight = classifier.weight.detach().double().numpy()
    bias = classifier.bias.detach().double().numpy()
    magnitude = np.abs(data.X) @ np.abs(weight).T + np.abs(bias)
    tolerance = 4 * BF16_UNIT_ROUNDOFF * magnitude
    assert (np.abs(logits - expected) <= tolerance).all(), np.abs(logits - expected) / magnitude
    # The same decisions, except where the head itself is within the tolerance of a tie.
    ranked = np.sort(expected, axis=1)
    close_call = ranked[:, -1] - ranked[:, -2] <= 2 * tolerance.max(axis=1)
    differ = predicted != head.predict(data.X)
    assert not (differ & ~close_call).any() and differ.mean() <= 0.02


def test_fine_tuning_beats_the_frozen_linear_probe(pretrained, tmp_path: Path) -> None:
    run = tmp_path / "run"
    output = invoke(finetune_args(pretrained, run, "--epochs", "8"))
    records = history(run)
    probe, best = records[0]["val_accuracy"], max(r["val_accuracy"] for r in records)
    assert probe < 0.75, f"frozen colour features should not tell orientation ({probe})"
    assert best >= 0.9 and best >= probe + 0.2, records
    assert f"linear probe {probe:.4f}" in output

    # The fine-tuned backbone is a weights file for the other commands: a new fingerprint,
    # and the saved head classifies its embeddings as the network did.
    head_doc = json.loads((run / "head" / "head.json").read_text())
    probe_doc = json.loads((run / "probe" / "head.json").read_text())
    assert head_doc["fingerprint"]["id"] != probe_doc["fingerprint"]["id"]
    cache = str(pretrained["root"] / "cache")
    evaluated = invoke(["evaluate", run / "head", pretrained["val"], "--cache", cache, "-q"])
    assert f"{best:.4f}" in evaluated
    extracted = invoke(
        [
            "extract",
            pretrained["val"],
            "--model",
            MODEL,
            "--weights",
            run / "backbone.pt",
            *PIXELS,
            "--precision",
            "fp32",  # as the run was: the precision is part of the fingerprint
            "--store-dtype",
            "float32",
            "--cache",
            cache,
            "-q",
        ]
    )
    assert head_doc["fingerprint"]["id"] in extracted
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert json.loads((run / "config.json").read_text())["loop"]["lr"] == 1e-2


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["network"]


def test_frozen_batchnorm_and_frozen_backbone_stay_put(pretrained, tmp_path: Path) -> None:
    from headstart.classify.persist import load_head
    from headstart.finetune.network import fold_linear_head

    original = torch.load(pretrained["weights"], weights_only=True)
    invoke(finetune_args(pretrained, tmp_path / "bn", "--epochs", "1"))
    trained = _state(tmp_path / "bn")
    for name in ("1.running_mean", "1.running_var", "5.running_mean", "5.running_var"):
        assert torch.equal(trained[f"features.body.{name}"], original[name]), name
    assert not torch.equal(trained["features.body.0.weight"], original["0.weight"])

    invoke(finetune_args(pretrained, tmp_path / "train-bn", "--epochs", "1", "--train-bn"))
    moved = _state(tmp_path / "train-bn")
    assert not torch.equal(moved["features.body.1.running_mean"], original["1.running_mean"])

    invoke(finetune_args(pretrained, tmp_path / "frozen", "--epochs", "1", "--unfreeze", "none"))
    frozen = _state(tmp_path / "frozen")
    for name, tensor in original.items():
        assert torch.equal(frozen[f"features.body.{name}"], tensor), name
    probe = fold_linear_head(load_head(tmp_path / "frozen" / "probe").head)
    assert not torch.allclose(frozen["classifier.weight"], probe.weight)  # only it trained


def test_parameter_groups_get_the_learning_rates_asked_for(pretrained, tmp_path: Path) -> None:
    args = ["--epochs", "1", "--lr", "2e-3", "--head-lr-mult", "5", "--weight-decay", "0.1"]
    invoke(finetune_args(pretrained, tmp_path / "run", *args, "--unfreeze", "last:1"))
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    groups = {g["name"]: g for g in saved["optimizer"]["param_groups"]}
    assert groups["backbone"]["initial_lr"] == pytest.approx(2e-3)
    assert groups["classifier"]["initial_lr"] == pytest.approx(1e-2)
    assert groups["backbone"]["weight_decay"] == 0.1
    assert groups["backbone-no-decay"]["weight_decay"] == 0.0
    # last:1 unfreezes only the final 1x1 convolution: its weight and bias.
    trainable = sum(len(g["params"]) for g in groups.values())
    assert trainable == 2 + 2


def _spawn(args: list) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "headstart", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _stop_in_epoch(process: subprocess.Popen, run: Path, sig: int, epoch: int) -> None:
    """Send ``sig`` a little into ``epoch`` (1: the first trained), once the records of the
    epochs before it (0: the probe) are written."""
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or len(history(run)) < epoch:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"epoch {epoch - 1} never finished"
        time.sleep(0.02)
    time.sleep(0.3)
    process.send_signal(sig)
    process.wait(timeout=60)


def _without_timings(run: Path) -> list[dict]:
    timings = ("images_per_second", "seconds")
    return [{k: v for k, v in r.items() if k not in timings} for r in history(run)]


@pytest.mark.parametrize(
    ("precision", "epochs", "stop_in", "stops"),
    [
        pytest.param("fp32", 3, 2, ("killed", "interrupted"), id="fp32"),
        # bf16 is emulated, and slower, where the processor lacks it: one epoch and one stop
        # (Ctrl-C in mid-epoch, resumed from that step) show it is as deterministic.
        pytest.param("bf16", 1, 1, ("interrupted",), id="bf16"),
    ],
)
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    pretrained,
    tmp_path: Path,
    monkeypatch,
    precision: str,
    epochs: int,
    stop_in: int,
    stops: tuple[str, ...],
) -> None:
    def args(run: Path, *more: str) -> list:
        extra = ("--epochs", str(epochs), "--augment", "standard", "--warmup", "0.2", *more)
        return finetune_args(pretrained, run, *extra, slow=True, precision=precision)

    reference = tmp_path / "reference"
    invoke(args(reference))
    expected = torch.load(reference / "backbone.pt", weights_only=True)

    for name in stops:
        sig = {"killed": signal.SIGKILL, "interrupted": signal.SIGINT}[name]
        run = tmp_path / name
        process = _spawn(args(run))
        _stop_in_epoch(process, run, sig, stop_in)
        stderr = process.stderr.read()
        if sig == signal.SIGINT:
            assert process.returncode == 130, stderr
            assert "--resume" in stderr and "Traceback" not in stderr
        else:
            assert process.returncode == -signal.SIGKILL
        saved = torch.load(run / "checkpoint.pt", weights_only=True)["progress"]
        assert saved["epoch"] < epochs, "the run ended before it could be stopped"
        output = invoke(args(run, "--resume"))
        assert "resumed after epoch" in output
        resumed = torch.load(run / "backbone.pt", weights_only=True)
        for key, tensor in expected.items():  # exactly: bf16 is as deterministic as fp32
            assert torch.equal(resumed[key], tensor), (name, key)
        assert _without_timings(run) == _without_timings(reference)
    if precision != "fp32":
        return

    # Ctrl-C outside a training step (here: the second validation) resumes from the checkpoint
    # of the last finished epoch.
    from headstart.finetune.loop import Trainer

    evaluate = Trainer._evaluate_record

    def interrupted_validation(self, epoch: int):
        if epoch == 2:
            raise KeyboardInterrupt
        return evaluate(self, epoch)

    run = tmp_path / "during-validation"
    monkeypatch.setattr(Trainer, "_evaluate_record", interrupted_validation)
    stopped = CliRunner().invoke(main, [str(a) for a in args(run)])
    assert stopped.exit_code == 130 and "interrupted in epoch 2 after step 0" in stopped.output
    monkeypatch.undo()
    invoke(args(run, "--resume"))
    resumed = torch.load(run / "backbone.pt", weights_only=True)
    assert all(torch.equal(resumed[key], tensor) for key, tensor in expected.items())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resume"], "holds no interrupted run"),
        (["--layer", "0"], "drop --layer"),
        (["--unfreeze", "first:2"], "--unfreeze takes all, none or last:N"),
    ],
)
def test_bad_requests_fail_in_one_line(pretrained, tmp_path, extra, message) -> None:
    result = CliRunner().invoke(
        main, [str(a) for a in finetune_args(pretrained, tmp_path / "run", *extra)]
    )
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_finished_run_is_not_overwritten(pretrained, tmp_path: Path) -> None:
    run = tmp_path / "run"
    invoke(finetune_args(pretrained, run, "--epochs", "1"))
    again = CliRunner().invoke(main, [str(a) for a in finetune_args(pretrained, run)])
    assert again.exit_code != 0 and "add --resume" in again.output
    changed = CliRunner().invoke(
        main, [str(a) for a in finetune_args(pretrained, run, "--epochs", "2", "--resume")]
    )
    assert changed.exit_code != 0 and "these differ: loop" in changed.output

    # Resumed on a machine where --precision auto resolves differently (bf16 there, fp32 here).
    config = json.loads((run / "config.json").read_text())
    config["precision_used"]["training"] = "bf16-elsewhere"
    (run / "config.json").write_text(json.dumps(config))
    elsewhere = CliRunner().invoke(
        main, [str(a) for a in finetune_args(pretrained, run, "--epochs", "1", "--resume")]
    )
    assert elsewhere.exit_code != 0 and "these differ: precision_used" in elsewhere.output


def test_folded_batchnorm_trains_exactly_like_the_unfolded_network() -> None:
    import torchvision

    from headstart.finetune.fold import fold_frozen_batchnorm

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics and affine terms
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    folded = fold_frozen_batchnorm(model, lambda bn: not bn.training)
    assert folded is not None
    assert not any(n.op == "call_module" and "bn" in str(n.target) for n in folded.graph.nodes)
    images = torch.randn(2, 3, 48, 48)
    expected = model(images)
    expected.square().sum().backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    actual = folded(images)
    actual.square().sum().backward()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    for name, parameter in model.named_parameters():  # the very same parameters get gradients
        torch.testing.assert_close(parameter.grad, reference[name], rtol=1e-3, atol=1e-4)
    for key, value in statistics.items():
        assert torch.equal(model.state_dict()[key], value)


def test_out_of_memory_splits_the_batch_and_keeps_the_step(pretrained, tmp_path: Path) -> None:
    """A pass over more than 8 images "runs out of memory": the step is redone in smaller
    passes, and the weights end where one pass over the whole batch takes them."""
    from headstart.extract import ExtractOptions, PreprocessOverrides, resolve_recipe
    from headstart.finetune.data import LabelledImages
    from headstart.finetune.loop import Trainer
    from headstart.finetune.network import ClassifierNetwork
    from headstart.finetune.settings import LoopSettings
    from headstart.models.features import build_feature_model

    recipe = resolve_recipe(
        ExtractOptions(
            MODEL,
            str(pretrained["weights"]),
            preprocess=PreprocessOverrides(32, 32, (0, 0, 0), (1, 1, 1)),
            device="cpu",
            precision="fp32",
        )
    )
    paths = sorted(str(p) for p in pretrained["train"].rglob("*.png"))[:32]
    images = LabelledImages(paths, [i % 2 for i in range(32)], recipe.preprocess)
    pixels = torch.stack([images[i].pixels for i in range(32)])
    labels = torch.tensor(images.labels)

    def trained(limit: int | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        features = build_feature_model(recipe.backbone).module
        network = ClassifierNetwork(features, nn.Linear(4, 2), recipe.preprocess)
        settings = LoopSettings(batch_size=32, lr=1e-2, warmup=0.0, precision="fp32", workers=0)
        trainer = Trainer(network, images, images, settings, tmp_path, recipe.device)
        if limit is not None:
            forward = network.forward

            def limited(batch: torch.Tensor) -> torch.Tensor:
                if len(batch) > limit:
                    raise torch.cuda.OutOfMemoryError("simulated")
                return forward(batch)

            network.forward = limited
        trainer.train_step(pixels, labels)
        assert trainer.accumulate == (1 if limit is None else 4)
        return {k: v.clone() for k, v in network.state_dict().items()}

    whole, split = trained(None), trained(8)
    for key, value in whole.items():
        torch.testing.assert_close(split[key], value, rtol=1e-4, atol=1e-5)
