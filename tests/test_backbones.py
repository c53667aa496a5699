import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODELS
from tiny_models import TinyNet
from torchvision.models import resnet18

from headstart.errors import HeadstartError
from headstart.models import WeightsUnavailable, get_backbone, list_backbones
from headstart.models.backbones import register_source
from headstart.models.features import build_feature_model, layer_names


def _width_on_meta(name: str) -> tuple[int, int | None]:
    """Output width of the feature model and the width its metadata promises, shapes only."""
    backbone = get_backbone(name, "none")
    try:
        with torch.device("meta"):
            features = build_feature_model(backbone)
    except RuntimeError:  # builders that compute on tensors (RegNet) need real memory
        features = build_feature_model(backbone)
        features.module.to("meta")
    crop = backbone.weights.preprocess.crop_size
    with torch.device("meta"):
        out = features.module(torch.empty(2, 3, crop, crop))
    return out.shape[1], features.expected_dim


@pytest.mark.parametrize("name", list_backbones("torchvision"))
def test_every_torchvision_backbone_gives_the_promised_width(name: str) -> None:
    width, expected = _width_on_meta(name)
    assert expected is not None and width == expected


def test_timm_backbone_gives_num_features() -> None:
    pytest.importorskip("timm")
    backbone = get_backbone("timm:test_vit.r160_in1k", "none")
    features = build_feature_model(backbone)
    crop = backbone.weights.preprocess.crop_size
    assert crop == 160
    out = features.module.eval()(torch.rand(2, 3, crop, crop))
    assert out.shape == (2, features.expected_dim)


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_source("torchvision")(object)


@pytest.mark.parametrize(
    ("spec", "weights", "message"),
    [
        ("resnet5O", "none", "did you mean resnet50"),
        ("resnet18", "IMAGENET_BEST", "DEFAULT, IMAGENET1K_V1, none, PATH"),
        ("resnet18", "missing/file.pth", "weights file not found"),
        ("nowhere.py:build", "none", "model file not found"),
        ("no_such_module_xyz:build", "none", "cannot import"),
    ],
)
def test_bad_specs_get_helpful_errors(spec: str, weights: str, message: str) -> None:
    with pytest.raises(HeadstartError, match=message):
        get_backbone(spec, weights)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("def build(:\n    pass\n", r"cannot import .*SyntaxError: .*\(user_model.py, line 1\)"),
        ("import no_such_package_xyz\n", r"ModuleNotFoundError: .*\(user_model.py, line 1\)"),
        (
            "import torch\n\ndef build():\n    return torch.nn.Linear(3, None)\n",
            r"user_model.py:build failed: TypeError: .*\(user_model.py, line 4\)",
        ),
    ],
)
def test_a_broken_model_file_is_reported_in_one_line(tmp_path: Path, code, message) -> None:
    (tmp_path / "user_model.py").write_text(code)
    with pytest.raises(HeadstartError, match=message):
        build_feature_model(get_backbone(f"{tmp_path / 'user_model.py'}:build", "none"))


def test_a_weights_file_given_as_the_model_says_where_it_belongs(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(TinyNet().state_dict(), weights)
    with pytest.raises(HeadstartError, match=r"not a TorchScript model .* goes to --weights"):
        build_feature_model(get_backbone(str(weights), "DEFAULT"))


def test_model_spec_forms_resolve_to_their_sources(tmp_path: Path) -> None:
    scripted = torch.jit.script(TinyNet().features)
    script_path = tmp_path / "net.pt"
    scripted.save(str(script_path))

    assert get_backbone("resnet18", "none").name == "torchvision:resnet18"
    assert get_backbone(str(script_path), "DEFAULT").family == "torchscript"
    assert get_backbone(f"{TINY_MODELS}:tiny_features", "none").family == "python"
    assert (
        get_backbone("tiny_models:tiny_features", "none").name == "python:tiny_models:tiny_features"
    )

    features = build_feature_model(get_backbone(str(script_path), "DEFAULT"))
    assert features.module(torch.rand(1, 3, 16, 16)).shape == (1, 8)
    with pytest.raises(HeadstartError, match="TorchScript"):
        layer_names(get_backbone(str(script_path), "DEFAULT"))


def test_a_finetuned_checkpoint_loads_without_its_classifier(tmp_path: Path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(5)
        tuned = resnet18(num_classes=10).eval()
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": tuned.state_dict()}, path)

    features = build_feature_model(get_backbone("resnet18", str(path)))

    x = torch.rand(2, 3, 64, 64)
    tuned.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(features.module.eval()(x), tuned(x))


def test_checkpoints_that_would_run_code_or_do_not_fit_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "whole_model.pt"
    torch.save(TinyNet(), pickled)  # a pickled module: loading it needs arbitrary unpickling
    with pytest.raises(HeadstartError, match="Python objects besides tensors"):
        build_feature_model(get_backbone("resnet18", str(pickled)))

    other = tmp_path / "tiny.pt"
    torch.save(TinyNet().state_dict(), other)
    with pytest.raises(HeadstartError, match="does not fit this model"):
        build_feature_model(get_backbone("resnet18", str(other)))


@pytest.mark.parametrize(
    "content",
    [b"", b"root:x:0:0:root:/root:/bin/bash\n", bytes(range(256)) * 4, b"PK\x03\x04broken zip"],
    ids=["empty", "text", "random", "truncated-zip"],
)
def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path: Path, content) -> None:
    weights = tmp_path / "weights.pt"
    weights.write_bytes(content)
    with pytest.raises(HeadstartError, match="not a readable PyTorch weights file"):
        build_feature_model(get_backbone("resnet18", str(weights)))


def test_offline_pretrained_weights_fail_with_instructions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    backbone = get_backbone("resnet18", "DEFAULT")
    with pytest.raises(WeightsUnavailable) as failure:
        build_feature_model(backbone)
    message = str(failure.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message

    # A checkpoint placed in TORCH_HOME by hand is used without any network.
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(resnet18().state_dict(), checkpoints / "resnet18-f37072fd.pth")
    assert build_feature_model(backbone).expected_dim == 512


def test_a_model_file_is_known_by_its_own_path_not_by_an_identical_copy(tmp_path: Path) -> None:
    # Modules of model files are shared by content: a copy imported first must not stand in
    # for this file once this one is edited.
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    shutil.copy(TINY_MODELS, first)
    shutil.copy(TINY_MODELS, second)
    get_backbone(f"{first}:tiny_features", "none")
    before = get_backbone(f"{second}:tiny_features", "none")
    assert before.code_file == str(second)
    second.write_text(second.read_text() + "\n# edited\n")
    after = get_backbone(f"{second}:tiny_features", "none")
    assert after.code_identity != before.code_identity
