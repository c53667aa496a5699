"""Users' own networks given as trained: the final classifier is found, cut off and recorded,
their training scripts' checkpoints load as they are, and fine-tuning replaces the classifier.

The network here has the shape of the common CIFAR-10 ResNet training scripts: a classifier named
``linear`` after a fixed-size ``F.avg_pool2d`` (so it only runs at its training input size), and
checkpoints saved as ``{"state_dict": ...}`` from a DataParallel model (keys prefixed
``module.``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_colour_folder
from PIL import Image
from torch import nn

from headstart.cache import EmbeddingCache
from headstart.cli import main
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, PreprocessOverrides
from headstart.extract.recipe import options_for_fingerprint, resolve_recipe
from headstart.models.classifier import find_classifier
from headstart.models.features import build_feature_model

NETWORK_CODE = """
import torch
import torch.nn.functional as F
from torch import nn


class CifarNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = F.avg_pool2d(out, 16)  # the training input size (32) is built in
        out = out.view(out.size(0), -1)
        return self.linear(out)


def cifar_net():
    return CifarNet()


def cifar_net_headless():
    model = CifarNet()
    model.linear = nn.Identity()
    return model
"""
PIXELS = ["--resize", "32", "--crop", "32", "--precision", "fp32", "--store-dtype", "float32"]


def run(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> dict[str, object]:
    """The network file, a training script's checkpoint of it, and the network itself."""
    root = tmp_path_factory.mktemp("own_network")
    code = root / "cifar_models.py"
    code.write_text(NETWORK_CODE)
    namespace: dict[str, object] = {}
    exec(compile(NETWORK_CODE, str(code), "exec"), namespace)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        trained = namespace["CifarNet"]()
        # Moved statistics, so a checkpoint that did not load would show.
        trained.bn1.running_mean.uniform_(-0.5, 0.5)
        trained.bn1.running_var.uniform_(0.5, 2.0)
    checkpoint = root / "ckpt.pth"
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"net": "CifarNet", "acc": 93.1, "epoch": 199, "state_dict": state}, checkpoint)
    return {"code": code, "checkpoint": checkpoint, "trained": trained.eval()}


def pixels_of(path: Path) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR))
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (tensor - mean) / std


def test_the_network_as_trained_embeds_what_goes_into_its_classifier(network, tmp_path) -> None:
    images = make_colour_folder(tmp_path / "images", per_class=2)
    model = f"{network['code']}:cifar_net"
    cache = tmp_path / "cache"
    result = run(
        "extract", images, "-m", model, "-w", network["checkpoint"], *PIXELS, "--cache", cache, "-q"
    )
    assert result.exit_code == 0, result.output

    store = EmbeddingCache(cache).open()
    assert store.fingerprint.recipe["classifier"] == "linear"
    paths = sorted(str(p) for p in images.rglob("*.jpg"))
    stored = store.load_files(paths)
    trained = network["trained"]
    with torch.no_grad():
        logits = trained(torch.stack([pixels_of(Path(p)) for p in paths]))
        captured = []
        hook = trained.linear.register_forward_hook(lambda m, i, o: captured.append(i[0]))
        trained(torch.stack([pixels_of(Path(p)) for p in paths]))
        hook.remove()
    assert stored.shape == (6, 16)
    # Resized by PIL here and by headstart's decoder there: equal up to resampling.
    np.testing.assert_allclose(stored, captured[0].numpy(), atol=0.05)
    assert not np.allclose(stored[:, :10], logits.numpy(), atol=0.05)


def test_a_factory_that_removed_the_classifier_takes_the_same_checkpoint(
    network, tmp_path, caplog
) -> None:
    full = build_feature_model(resolved(f"{network['code']}:cifar_net", network["checkpoint"]))
    with caplog.at_level(logging.WARNING):
        headless = build_feature_model(
            resolved(f"{network['code']}:cifar_net_headless", network["checkpoint"])
        )
    assert "ignored linear.weight, linear.bias in ckpt.pth" in caplog.text
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(headless.module(x), full.module(x))
    assert full.expected_dim == 16


def test_leftover_keys_that_are_not_a_classifier_are_still_refused(network, tmp_path) -> None:
    state = dict(network["trained"].state_dict())
    state["layer2.weight"] = torch.zeros(4, 4)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    with pytest.raises(HeadstartError, match=r"does not fit this model \(unexpected"):
        build_feature_model(resolved(f"{network['code']}:cifar_net_headless", path))


def resolved(model: str, weights: Path | str, **options: object):
    overrides = PreprocessOverrides(resize_size=32, crop_size=32)
    return resolve_recipe(
        ExtractOptions(model, str(weights), preprocess=overrides, **options)
    ).backbone


def test_classifier_option_names_keeps_or_refuses(network) -> None:
    model = f"{network['code']}:cifar_net"
    logits = build_feature_model(resolved(model, network["checkpoint"], classifier="none"))
    assert logits.module(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    named = resolved(model, network["checkpoint"], classifier="linear")
    assert build_feature_model(named).module(torch.randn(2, 3, 32, 32)).shape == (2, 16)

    with pytest.raises(HeadstartError, match=r"no module 'linaer'; did you mean linear"):
        resolved(model, network["checkpoint"], classifier="linaer")
    with pytest.raises(HeadstartError, match="--layer and --classifier"):
        resolved(model, network["checkpoint"], classifier="linear", layer="layer1")
    with pytest.raises(HeadstartError, match="for your own networks"):
        resolved("resnet18", "none", classifier="fc")


def test_the_fingerprint_records_the_cut_and_rebuilds_it(network) -> None:
    model = f"{network['code']}:cifar_net"
    overrides = PreprocessOverrides(resize_size=32, crop_size=32)
    found = resolve_recipe(ExtractOptions(model, str(network["checkpoint"]), preprocess=overrides))
    kept = resolve_recipe(
        ExtractOptions(model, str(network["checkpoint"]), preprocess=overrides, classifier="none")
    )
    assert found.fingerprint.recipe["classifier"] == "linear"
    assert kept.fingerprint.recipe["classifier"] is None
    assert found.fingerprint.differences(kept.fingerprint) == ["classifier: linear vs null"]
    for recipe in (found, kept):
        again = options_for_fingerprint(recipe.fingerprint)
        assert resolve_recipe(again).fingerprint.id == recipe.fingerprint.id


class LogSoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.fc(self.body(x)), dim=1)


class CosineClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x) @ nn.functional.normalize(self.weight).T


class NamedHeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projection = nn.Linear(4, 4)
        self.head = CosineClassifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.projection(self.body(x)))


class ProjectionFirstNet(nn.Module):
    """A Linear registered last but applied first: order of application is what counts."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
        self.out = nn.Linear(5, 2)
        self.stem = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.stem(x)))


@pytest.mark.parametrize(
    ("network", "crop", "expected"),
    [
        (LogSoftmaxNet(), 8, None),  # something follows the Linear: not a plain classifier
        (NamedHeadNet(), 8, "head"),  # not a Linear, but named and last
        (ProjectionFirstNet(), 8, "out"),
        (ProjectionFirstNet(), 9, None),  # cannot run at 9: by name only, and none is named so
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 8, None),  # an embedding network
    ],
    ids=["log-softmax", "named-head", "applied-last", "no-trial-pass", "feature-map"],
)
def test_finding_the_classifier(network: nn.Module, crop: int, expected: str | None) -> None:
    assert find_classifier(network, crop) == expected


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_sequential_is_cut_at_its_last_linear(tmp_path) -> None:
    torch.manual_seed(0)
    sequential = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)
    ).eval()
    scripted = tmp_path / "net.pt"
    torch.jit.script(sequential).save(str(scripted))
    backbone = resolved(str(scripted), "DEFAULT")
    assert backbone.classifier == "3"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(build_feature_model(backbone).module(x), sequential[:3](x))
    with pytest.raises(HeadstartError, match=r"only the last module of an nn\.Sequential"):
        resolved(str(scripted), "DEFAULT", classifier="0")


def test_layers_names_the_module_taken(network) -> None:
    result = CliRunner().invoke(main, ["layers", f"{network['code']}:cifar_net", "--crop", "32"])
    assert result.exit_code == 0, result.output
    assert "layer1.1" in result.stdout.splitlines()
    assert (
        "classifier: linear (Linear 16 -> 10), found; cut off, embeddings are its input"
        in result.stderr
    )


def test_finetune_replaces_the_classifier_and_its_backbone_reloads(network, tmp_path) -> None:
    images = make_colour_folder(tmp_path / "images", per_class=6)
    model = ["-m", f"{network['code']}:cifar_net", *PIXELS]
    cache, out = tmp_path / "cache", tmp_path / "run"
    common = [*model, "--cache", cache, "-q"]
    result = run(
        "finetune", images, *common, "-w", network["checkpoint"], "--epochs", "1", "-o", out
    )
    assert result.exit_code == 0, result.output
    head = json.loads((out / "head" / "head.json").read_text())
    assert len(head["classes"]) == 3
    backbone = out / "backbone.pt"
    assert not [k for k in torch.load(backbone, weights_only=True) if "linear" in k]

    result = run("extract", images, *common, "-w", backbone)
    assert result.exit_code == 0, result.output
    # The fine-tuned backbone's vectors are a second recipe, cut at the same classifier.
    recipes = [f.recipe for f in EmbeddingCache(cache).fingerprints()]
    assert len(recipes) == 2 and {r["classifier"] for r in recipes} == {"linear"}
