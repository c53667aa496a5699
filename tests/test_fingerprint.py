import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from headstart.extract import ExtractOptions, PreprocessOverrides, extract, resolve_recipe

BASE = ExtractOptions(model="resnet18", weights="none", device="cpu", precision="fp32")


def fingerprint_id(options: ExtractOptions) -> str:
    return resolve_recipe(options).fingerprint.id


def test_options_that_only_change_speed_reuse_the_cached_vectors(
    image_folder: Path, cache_dir: Path
) -> None:
    small = replace(BASE, preprocess=PreprocessOverrides(resize_size=40, crop_size=32))
    first = extract([str(image_folder)], replace(small, batch_size=7, workers=0), cache_dir)
    fast = replace(small, batch_size=2, workers=2, compile=False, flush_seconds=0.0)
    second = extract([str(image_folder)], fast, cache_dir)
    assert first.embedded == 9
    assert (second.embedded, second.from_cache) == (0, 9)
    assert second.fingerprint.id == first.fingerprint.id


def test_each_thing_that_changes_vectors_changes_the_fingerprint(tmp_path: Path) -> None:
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(resnet18(num_classes=3).state_dict(), first)
    torch.save(resnet18(num_classes=3).state_dict(), second)
    variants = {
        "base": BASE,
        "model": replace(BASE, model="resnet34"),
        "weights file": replace(BASE, weights=str(first)),
        "other weights file": replace(BASE, weights=str(second)),
        "layer": replace(BASE, layer="layer3"),
        "precision": replace(BASE, precision="bf16"),
        "preprocessing": replace(BASE, preprocess=PreprocessOverrides(crop_size=160)),
    }
    ids = {name: fingerprint_id(options) for name, options in variants.items()}
    assert len(set(ids.values())) == len(ids), ids


def test_weights_identity_is_the_file_content_not_its_path(tmp_path: Path) -> None:
    original = tmp_path / "w.pth"
    torch.save(resnet18().state_dict(), original)
    moved = tmp_path / "elsewhere" / "renamed.pth"
    moved.parent.mkdir()
    shutil.copy(original, moved)
    assert fingerprint_id(replace(BASE, weights=str(original))) == fingerprint_id(
        replace(BASE, weights=str(moved))
    )


def test_recipe_is_readable() -> None:
    recipe = resolve_recipe(BASE).fingerprint.recipe
    assert recipe["model"] == "torchvision:resnet18"
    assert recipe["weights"].startswith("random-init")
    assert recipe["preprocess"]["crop_size"] == 224 and recipe["precision"] == "fp32"


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_depends_on_the_processor(monkeypatch, native_bf16, expected) -> None:
    # Why every test that compares numbers names its precision: auto differs between machines.
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: native_bf16, raising=False)
    assert resolve_recipe(replace(BASE, precision="auto")).precision == expected


def test_differences_name_the_fields_that_differ() -> None:
    ours = resolve_recipe(BASE).fingerprint
    theirs = resolve_recipe(
        replace(BASE, precision="bf16", preprocess=PreprocessOverrides(crop_size=160))
    ).fingerprint
    assert ours.differences(theirs) == [
        "precision: fp32 vs bf16",
        "preprocess.crop_size: 224 vs 160",
        "preprocess.resize_size: 256 vs 182",
    ]
    assert ours.differences(ours) == []


def test_a_fingerprint_record_round_trips_and_an_edited_one_is_refused() -> None:
    from headstart.cache import Fingerprint

    fingerprint = resolve_recipe(BASE).fingerprint
    document = json.loads(json.dumps(fingerprint.to_dict()))
    again = Fingerprint.from_dict(document)
    assert again.id == fingerprint.id and again.source == fingerprint.source
    document["recipe"]["precision"] = "bf16"
    with pytest.raises(ValueError, match="hashes to"):
        Fingerprint.from_dict(document)
    assert Fingerprint.from_dict(document, check_id=False).id != fingerprint.id
