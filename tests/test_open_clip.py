"""open_clip backbones and text embeddings, offline, with tiny random-initialised configs.

The configs are registered with ``open_clip.add_model_config`` as a user would; a pretrained
tag is stood in for by an entry in open_clip's table of tags (its ``file`` key points at a
local checkpoint, or its hub id at nothing that exists).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import add_random_clip_configs, make_folder, run_cli
from PIL import Image

from headstart.cache.store import EmbeddingCache
from headstart.cache.texts import TextCache
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, options_for_fingerprint, resolve_recipe
from headstart.extract.text import (
    TextEncoder,
    can_embed_text,
    encode_texts,
    logit_scale,
    why_no_text,
)
from headstart.models import WeightsUnavailable, get_backbone
from headstart.models.backbones import RANDOM_INIT_SEED
from headstart.models.features import build_feature_model
from headstart.models.preprocess import Preprocess, normalize, to_uint8_tensor

open_clip = pytest.importorskip("open_clip")

TINY = "hs-test-tiny-clip"
TINY_48 = "hs-test-tiny-clip-48"
# The whole run: fp32 whatever the processor, decoding in the test's process.
ARGS = ["--precision", "fp32", "--workers", "0", "-q"]


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    add_random_clip_configs(tmp_path_factory.mktemp("open_clip_configs"), {TINY: 32, TINY_48: 48})


def _random_model(arch: str = TINY, seed: int = RANDOM_INIT_SEED) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(arch, pretrained_text=False).eval()


def _open_clip_images(model: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    """The images as open_clip's own evaluation transform prepares them."""
    cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    transform = open_clip.transform.image_transform_v2(cfg, is_train=False)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def _stand_in_tag(monkeypatch: pytest.MonkeyPatch, arch: str, tag: str, **cfg) -> None:
    table = open_clip.pretrained._PRETRAINED
    monkeypatch.setitem(table, arch, {**table.get(arch, {}), tag: cfg})


def _fingerprint(model: str, weights: str = "none", layer: str | None = None):
    options = ExtractOptions(model=model, weights=weights, layer=layer, precision="fp32")
    return resolve_recipe(options).fingerprint


def test_extract_caches_what_encode_image_gives(tmp_path: Path) -> None:
    paths = make_folder(tmp_path / "images", {"cat": 3, "dog": 2})
    cache = tmp_path / "cache"
    model = f"open_clip:{TINY}"

    result = run_cli(
        "extract",
        tmp_path / "images",
        "--model",
        model,
        "--weights",
        "none",
        *ARGS,
        "--cache",
        cache,
    )

    assert result.exit_code == 0, result.output
    store = EmbeddingCache(cache).open()
    assert store.fingerprint.recipe["model"] == model and store.dim == 32
    reference = _random_model()
    with torch.no_grad():
        expected = reference.encode_image(_open_clip_images(reference, paths)).numpy()
    np.testing.assert_allclose(store.load_files(paths), expected, rtol=2e-3, atol=2e-3)
    # --layer cuts the image tower at any node, as for every other backbone.
    backbone = get_backbone(model, "none")
    features = build_feature_model(backbone, "visual.transformer.resblocks.0")
    assert features.module(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    assert build_feature_model(backbone).expected_dim == 32


def test_preprocessing_comes_from_the_config_and_the_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    for arch in (TINY, TINY_48):
        preprocess = get_backbone(f"open_clip:{arch}", "none").weights.preprocess
        cfg = open_clip.get_model_preprocess_cfg(_random_model(arch))
        assert (preprocess.crop_size, preprocess.resize_size) == tuple(cfg["size"])
        assert preprocess.mean == pytest.approx(cfg["mean"]) and preprocess.std == pytest.approx(
            cfg["std"]
        )
        assert (preprocess.interpolation, preprocess.resize_mode) == ("bicubic", "shortest")
    small, large = _fingerprint(f"open_clip:{TINY}"), _fingerprint(f"open_clip:{TINY_48}")
    assert small.id != large.id and large.recipe["preprocess"]["crop_size"] == 48
    assert small.recipe["model_code"] != large.recipe["model_code"]  # the config is the network

    _stand_in_tag(
        monkeypatch,
        TINY,
        "squashed",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bilinear",
        resize_mode="squash",
        hf_hub="headstart-tests/none/",
    )
    tagged = _fingerprint(f"open_clip:{TINY}/squashed")
    assert tagged.recipe["preprocess"] == {
        "resize_size": 32,
        "crop_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    # A shortest-side recipe records no resize mode: fingerprints made before it keep their ids.
    assert "resize_mode" not in small.recipe["preprocess"]
    assert tagged.recipe["model"] == f"open_clip:{TINY}/squashed"
    options_for_fingerprint(tagged)  # rebuilds it exactly (it refuses otherwise)


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_resize_modes_match_open_clip_transforms(mode: str) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 52, 3), np.uint8))
    preprocess = Preprocess(24, 24, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4), "bicubic", mode)
    cfg = open_clip.transform.PreprocessCfg(
        size=24, mean=preprocess.mean, std=preprocess.std, resize_mode=mode
    )
    theirs = open_clip.transform.image_transform_v2(cfg, is_train=False)(image)
    ours = normalize(to_uint8_tensor(image, preprocess)[None], preprocess)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_local_checkpoint_of_the_whole_model_is_the_weights(tmp_path: Path) -> None:
    paths = make_folder(tmp_path / "images", {"x": 3})
    trained = _random_model(seed=123)
    with torch.no_grad():
        trained.logit_scale.fill_(np.log(50.0))
    checkpoint = tmp_path / "clip.pt"
    torch.save(trained.state_dict(), checkpoint)
    cache = tmp_path / "cache"

    result = run_cli(
        "extract",
        tmp_path / "images",
        "--model",
        f"open_clip:{TINY}",
        "--weights",
        checkpoint,
        *ARGS,
        "--cache",
        cache,
    )

    assert result.exit_code == 0, result.output
    store = EmbeddingCache(cache).open()
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert store.fingerprint.recipe["weights"] == f"file:sha256:{digest}"
    with torch.no_grad():
        expected = trained.encode_image(_open_clip_images(trained, paths)).numpy()
    np.testing.assert_allclose(store.load_files(paths), expected, rtol=2e-3, atol=2e-3)
    # The text side is the same checkpoint's.
    texts = ["a red circle", "a blue square"]
    tokens = open_clip.get_tokenizer(TINY)(texts)
    with torch.no_grad():
        expected_text = trained.encode_text(tokens).numpy()
    np.testing.assert_allclose(
        encode_texts(texts, store.fingerprint, cache), expected_text, rtol=1e-4, atol=1e-5
    )
    assert logit_scale(store.fingerprint, cache).scale == pytest.approx(50.0)

    # A file of the image tower alone (what fine-tuning writes) embeds images, not text.
    tower = tmp_path / "tower.pt"
    torch.save({k: v for k, v in trained.state_dict().items() if k.startswith("visual.")}, tower)
    images_only = _fingerprint(f"open_clip:{TINY}", str(tower))
    with pytest.raises(HeadstartError, match="only the image tower"):
        TextEncoder.from_fingerprint(images_only, device="cpu")


def test_pretrained_tag_weights_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    _stand_in_tag(monkeypatch, TINY, "nowhere", hf_hub="headstart-tests/no-such-model/")
    make_folder(tmp_path / "images", {"x": 1})
    spec = f"open_clip:{TINY}/nowhere"

    with pytest.raises(WeightsUnavailable) as caught:
        get_backbone(spec).weights.ensure_available()
    message = str(caught.value)
    assert "\n" not in message and "--weights PATH" in message
    assert "HF_HOME" in message and "HF_HUB_OFFLINE=1" in message
    result = run_cli(
        "extract", tmp_path / "images", "--model", spec, *ARGS, "--cache", tmp_path / "c"
    )
    assert result.exit_code == 1 and "cannot load open_clip weights" in result.output
    assert "Traceback" not in result.output

    # The tag's weights, found locally (open_clip's `file` entry), are DEFAULT's.
    trained = _random_model(seed=7)
    local = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), local)
    _stand_in_tag(monkeypatch, TINY, "local", file=str(local))
    backbone = get_backbone(f"open_clip:{TINY}/local")
    assert backbone.weights.identity.startswith(f"open_clip:{TINY}/local:")
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            build_feature_model(backbone).module(image), trained.encode_image(image)
        )

    with pytest.raises(HeadstartError, match="no pretrained weights"):
        get_backbone(f"open_clip:{TINY_48}")  # no tag, and none to default to
    with pytest.raises(HeadstartError, match="did you mean"):
        get_backbone("open_clip:ViT-B-32/laion2b_s34b_b79", "none")


def test_text_embeddings_are_cached_per_fingerprint(
    tmp_path: Path, text_encodes: list[list[str]]
) -> None:
    fingerprint = _fingerprint(f"open_clip:{TINY}")
    cache = tmp_path / "cache"
    calls = text_encodes
    texts = ["a red circle", "a blue square", "a red circle"]

    first = encode_texts(texts, fingerprint, cache, device="cpu")

    reference = _random_model()
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer(TINY)(texts)).numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5)
    assert calls == [["a red circle", "a blue square"]]  # each text once
    again = encode_texts(texts, fingerprint, cache, device="cpu")
    np.testing.assert_array_equal(again, first)
    assert len(calls) == 1  # nothing encoded the second time
    encode_texts(["a green triangle", "a red circle"], fingerprint, cache, device="cpu")
    assert calls[-1] == ["a green triangle"]
    assert len(TextCache(cache, fingerprint)) == 3
    assert logit_scale(fingerprint, cache).scale == pytest.approx(1 / 0.07)

    # Another fingerprint's rows are never used, even when its file is copied into this one's.
    other = _fingerprint(f"open_clip:{TINY_48}")
    target = TextCache(cache, other).directory
    target.mkdir(parents=True)
    for path in TextCache(cache, fingerprint).files():
        (target / path.name).write_bytes(path.read_bytes())
    before = len(calls)
    theirs = encode_texts(texts, other, cache, device="cpu")
    assert len(calls) == before + 1 and theirs.shape == first.shape
    assert not np.allclose(theirs, first)  # other weights (seeded alike, other shapes)


def test_many_small_text_files_are_merged(tmp_path: Path) -> None:
    fingerprint = _fingerprint(f"open_clip:{TINY}")
    encoder = TextEncoder.from_fingerprint(fingerprint, device="cpu")
    queries = [f"query {i}" for i in range(20)]
    for query in queries:
        encode_texts([query], fingerprint, tmp_path, encoder=encoder)
    texts = TextCache(tmp_path, fingerprint)
    assert len(texts.files()) < 16 and len(texts) == 20
    np.testing.assert_allclose(
        encode_texts(queries, fingerprint, tmp_path, encoder=encoder),
        encoder.encode(queries),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="embeds for"):
        encode_texts(["x"], _fingerprint(f"open_clip:{TINY_48}"), tmp_path, encoder=encoder)


def test_which_fingerprints_can_embed_text(tmp_path: Path) -> None:
    torchvision_fp = _fingerprint("resnet18")
    assert not can_embed_text(torchvision_fp) and "image-only" in why_no_text(torchvision_fp)
    assert can_embed_text(_fingerprint(f"open_clip:{TINY}"))
    cut = _fingerprint(f"open_clip:{TINY}", layer="visual.transformer.resblocks.0")
    assert not can_embed_text(cut)
    with pytest.raises(HeadstartError, match="cannot embed text: torchvision:resnet18"):
        encode_texts(["a dog"], torchvision_fp, tmp_path)


def test_info_and_models_show_image_text_backbones(tmp_path: Path) -> None:
    make_folder(tmp_path / "images", {"x": 2})
    cache = tmp_path / "cache"
    for model in (f"open_clip:{TINY}", "resnet18"):
        args = ["--resize", "40", "--crop", "32"] if model == "resnet18" else []
        result = run_cli(
            "extract",
            tmp_path / "images",
            "--model",
            model,
            "--weights",
            "none",
            *args,
            *ARGS,
            "--cache",
            cache,
        )
        assert result.exit_code == 0, result.output
    clip = next(fp for fp in EmbeddingCache(cache).fingerprints() if can_embed_text(fp))
    encode_texts(["a photo of x"], clip, cache, device="cpu")

    info = run_cli("info", cache).output

    assert "text: yes, 1 text embeddings cached" in info
    assert "text: no; torchvision:resnet18 is an image-only model" in info
    listed = run_cli("models", "open_clip:*").output.split()
    assert {
        "open_clip:ViT-B-32",
        "open_clip:ViT-B-32/laion2b_s34b_b79k",
        f"open_clip:{TINY}",
    } <= set(listed)
