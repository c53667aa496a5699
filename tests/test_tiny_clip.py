"""The tiny image-text model trained here (tests/tiny_clip.py) really behaves like CLIP.

Tests of zero-shot heads and search by text rely on it, so this file checks what they take for
granted: it trains in well under a minute, loads through open_clip's own path for user
weights (a registered config plus a checkpoint file), and on pictures it never saw it names
the class far above chance and finds red circles for "a red circle".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from tiny_clip import CLASSES, STEPS, TinyClip, caption, make_image, train_tiny_clip, write_images

HELD_OUT_SEED = 1234  # training draws its pictures from seed 0


def load_as_user(tiny: TinyClip):
    """What a user with their own weights does: register the config, name the checkpoint."""
    open_clip.add_model_config(tiny.config_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(
        tiny.config_name, pretrained=str(tiny.checkpoint)
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(tiny.config_name)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return write_images(tmp_path_factory.mktemp("held_out"), per_class=20, seed=HELD_OUT_SEED)


@pytest.fixture(scope="module")
def embedded(tiny_clip: TinyClip, held_out: dict[str, list[Path]]):
    """Normalised image features of the held-out PNG files, their labels, and the model."""
    model, preprocess, tokenizer = load_as_user(tiny_clip)
    paths = [p for name in CLASSES for p in held_out[name]]
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(p)) for p in paths])
        features = model.encode_image(images, normalize=True)
    return model, tokenizer, features, labels


def encode_text(model, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True)


def test_trains_every_step_it_is_asked_for(tiny_clip: TinyClip) -> None:
    assert tiny_clip.steps == STEPS


def test_checkpoint_is_a_plain_state_dict(tiny_clip: TinyClip) -> None:
    if tiny_clip.checkpoint.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(tiny_clip.checkpoint))
    else:
        state = torch.load(tiny_clip.checkpoint, weights_only=True)
    model = open_clip.create_model(tiny_clip.config_name)  # random init from the config
    assert set(state) == set(model.state_dict())
    assert state["token_embedding.weight"].shape == (49408, 64)  # open_clip's own tokenizer


def test_tokenizer_follows_the_config(tiny_clip: TinyClip) -> None:
    _, _, tokenizer = load_as_user(tiny_clip)
    assert tokenizer([caption("red", "circle")]).shape == (1, 16)


def test_local_dir_loads_the_same_weights(tiny_clip: TinyClip) -> None:
    by_name, preprocess, _ = load_as_user(tiny_clip)
    by_dir = open_clip.create_model(f"local-dir:{tiny_clip.config_dir}").eval()
    image = preprocess(make_image("blue", "square", np.random.default_rng(7))).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(by_dir.encode_image(image), by_name.encode_image(image))


def test_zero_shot_is_far_above_chance(embedded) -> None:
    model, tokenizer, features, labels = embedded
    classes = encode_text(model, tokenizer, [f"a {name}" for name in CLASSES])
    predicted = (features @ classes.T).argmax(dim=1)
    accuracy = (predicted == labels).float().mean().item()
    assert accuracy > 0.9, f"zero-shot accuracy {accuracy:.3f} (chance {1 / len(CLASSES):.3f})"


def test_zero_shot_with_the_imagenet_prompt_ensemble(embedded) -> None:
    """The 80 ImageNet templates ("a bad photo of a {}.", "a sculpture of a {}.") use words the
    model never saw; averaged, they must still name the class, as zero-shot heads use them."""
    model, tokenizer, features, labels = embedded
    weights = open_clip.build_zero_shot_classifier(
        model, tokenizer, list(CLASSES), open_clip.OPENAI_IMAGENET_TEMPLATES, use_tqdm=False
    )
    accuracy = ((features @ weights).argmax(dim=1) == labels).float().mean().item()
    assert accuracy > 0.9, f"zero-shot accuracy {accuracy:.3f} with the prompt ensemble"


def test_text_search_finds_the_described_pictures(embedded) -> None:
    model, tokenizer, features, labels = embedded
    queries = encode_text(model, tokenizer, [f"a {name}" for name in CLASSES])
    for i, name in enumerate(CLASSES):
        top = (features @ queries[i]).argsort(descending=True)[:5]
        found = [CLASSES[j] for j in labels[top]]
        assert found == [name] * 5, f"top 5 for 'a {name}': {found}"


def test_same_seed_same_weights_and_caller_state_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    digests = [
        hashlib.sha256(train_tiny_clip(tmp_path / str(i), steps=3).checkpoint.read_bytes())
        for i in range(2)
    ]
    assert digests[0].digest() == digests[1].digest()
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(torch.rand(3), expected)
