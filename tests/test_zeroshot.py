"""Zero-shot heads, offline, with a tiny random-initialised open_clip config.

Random weights check the plumbing (the head computes the model's own image-text logits, from
prompts encoded once, and is stored and used as any head), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import add_random_clip_configs, make_colour_folder, run_cli
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from headstart.cache.store import EmbeddingCache
from headstart.cache.texts import LogitScale, TextCache
from headstart.classify.persist import load_head
from headstart.classify.sweep import LeaderboardRow, refit
from headstart.classify.zeroshot import ZeroShotHead, prompt_templates, zeroshot_head
from headstart.errors import HeadstartError
from headstart.models.backbones import RANDOM_INIT_SEED

open_clip = pytest.importorskip("open_clip")

ARCH = "hs-test-zeroshot-clip"
MODEL = ["--model", f"open_clip:{ARCH}", "--weights", "none"]
RUN = ["--precision", "fp32", "--workers", "0", "-q"]
CLASSES = ["blue", "green", "red"]  # make_colour_folder's, sorted


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zeroshot")
    add_random_clip_configs(root / "configs", {ARCH: 32})
    make_colour_folder(root / "train", per_class=6)
    make_colour_folder(root / "test", per_class=3, start_seed=500)
    return root


def _train(workspace: Path, *args: object):
    cache = ["--cache", workspace / "cache"]
    return run_cli("train", *args, *MODEL, *RUN, *cache)


def _expected_logits(X: np.ndarray, templates: list[str]) -> np.ndarray:
    """The model's own zero-shot logits, with open_clip alone: the random init headstart uses."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(ARCH, pretrained_text=False).eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    with torch.no_grad():
        weights = []
        for name in CLASSES:
            texts = model.encode_text(tokenizer([t.format(name) for t in templates]))
            mean = torch.nn.functional.normalize(texts, dim=-1).mean(dim=0)
            weights.append(mean / mean.norm())
        images = torch.nn.functional.normalize(torch.from_numpy(X), dim=-1)
        return (model.logit_scale.exp() * images @ torch.stack(weights).T).numpy()


def test_scores_are_the_models_logits_and_prompts_are_encoded_once(
    workspace: Path, text_encodes: list[list[str]]
) -> None:
    head_dir = workspace / "head"

    trained = _train(workspace, workspace / "train", "--head", "zeroshot", "-o", head_dir)

    assert trained.exit_code == 0, trained.output
    assert "zeroshot" in trained.output and "80 prompts a class" in trained.output
    templates = list(prompt_templates("openai"))
    assert len(templates) == 80 and all("{}" in t for t in templates)
    assert len(text_encodes) == 1 and len(text_encodes[0]) == 80 * len(CLASSES)  # each prompt once
    paths = sorted((workspace / "test").rglob("*.jpg"))
    run_cli("extract", workspace / "test", *MODEL, *RUN, "--cache", workspace / "cache")
    store = EmbeddingCache(workspace / "cache").open()
    X = store.load_files(paths)
    loaded = load_head(head_dir, store.fingerprint)
    head = loaded.head
    assert isinstance(head, ZeroShotHead) and list(head.classes_) == CLASSES
    assert loaded.document["params"] == {"prompts": "openai"}
    expected = _expected_logits(X, templates)
    np.testing.assert_allclose(head.class_scores(X), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        head.predict_proba(X), torch.from_numpy(expected).softmax(dim=1).numpy(), atol=1e-5
    )

    # A second head from the same prompts encodes nothing: they are in the text cache.
    again = _train(workspace, workspace / "train", "--head", "zeroshot", "-o", workspace / "h2")
    assert again.exit_code == 0, again.output
    assert len(text_encodes) == 1
    assert len(TextCache(workspace / "cache", store.fingerprint)) == 80 * len(CLASSES)
    # The saved head gives the probabilities of the head built in memory, bit for bit.
    built = zeroshot_head(CLASSES, store.fingerprint, workspace / "cache")
    np.testing.assert_array_equal(head.predict_proba(X), built.predict_proba(X))

    evaluated = run_cli(
        "evaluate", head_dir, workspace / "test", *RUN[2:], "--cache", workspace / "cache"
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.output.startswith("9 images: accuracy")
    predicted = run_cli(
        "predict", head_dir, workspace / "test", "--format", "jsonl", *RUN[2:],
        "--cache", workspace / "cache",
    )  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in predicted.output.splitlines()]
    by_path = {row["path"]: row["label"] for row in rows}
    assert by_path == {str(p): CLASSES[i] for p, i in zip(paths, expected.argmax(1), strict=True)}


def test_classes_without_labelled_images(workspace: Path, text_encodes: list[list[str]]) -> None:
    names = workspace / "classes.txt"
    names.write_text("red\ngreen\n\nblue\n")
    prompts = workspace / "prompts.txt"
    prompts.write_text("# mine\na photo of {}.\n{}, a colour\n")

    # No SOURCES at all: the model names the embeddings, the class names are all it needs.
    built = _train(
        workspace, "--head", "zeroshot", "--classes", "red,green,blue", "-o", workspace / "n1"
    )
    assert built.exit_code == 0, built.output
    assert "no validation" in built.output
    document = json.loads((workspace / "n1" / "head.json").read_text())
    assert document["classes"] == CLASSES and document["metrics"] == {}
    # ... and the head is for the images that model embeds: evaluate takes it.
    evaluated = run_cli("evaluate", workspace / "n1", workspace / "test", *RUN[2:],
                        "--cache", workspace / "cache")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output

    # A file of names, unlabelled sources, held-out --val, and prompts of one's own.
    unlabelled = workspace / "unlabelled"
    unlabelled.mkdir()
    for path in sorted((workspace / "train" / "red").glob("*.jpg"))[:3]:
        (unlabelled / path.name).write_bytes(path.read_bytes())
    args = [
        "--head",
        "zeroshot",
        "--classes",
        names,
        "--prompts",
        prompts,
        "--val",
        workspace / "test",
    ]
    validated = _train(workspace, unlabelled, *args, "-o", workspace / "n2")  # fmt: skip
    assert validated.exit_code == 0, validated.output
    assert "2 prompts a class" in validated.output and "validation 9" in validated.output
    assert text_encodes[-1] == ["a photo of blue.", "blue, a colour", "a photo of green.",
                           "green, a colour", "a photo of red.", "red, a colour"]  # fmt: skip
    loaded = load_head(workspace / "n2")
    assert loaded.document["params"] == {"prompts": str(prompts)}
    assert loaded.document["metrics"]["n"] == 9

    prompts.write_text("a photo without a slot\n")
    refused = _train(workspace, "--head", "zeroshot", "--classes", "a,b", "--prompts", prompts)
    assert refused.exit_code == 1 and "has no {}" in refused.output
    refused = _train(workspace, "--head", "zeroshot")
    assert refused.exit_code == 1 and "--classes" in refused.output


def test_a_sweep_over_all_heads_has_a_zeroshot_row(workspace: Path) -> None:
    out = workspace / "swept"

    trained = _train(workspace, workspace / "train", "--head", "all", "--sweep", "--epochs", "3",
                     "-o", out)  # fmt: skip

    assert trained.exit_code == 0, trained.output
    table = trained.output.split("note\n")[1]
    assert any(line.split()[:2] == ["zeroshot", "prompts=openai"] for line in table.splitlines())
    notes = json.loads((out / "head.json").read_text())["notes"]
    assert [r["head"] for r in notes["leaderboard"]].count("zeroshot") == 1
    # Chosen by a sweep, a zero-shot head is kept as built, never refitted on images.
    head = ZeroShotHead.from_text(CLASSES, np.eye(3, 32), LogitScale(100.0))
    row = LeaderboardRow("zeroshot", "prompts", "openai", None, 0.0, head)
    assert refit(row, np.zeros((4, 32), np.float32), np.array(["red"] * 4)) is head


def test_image_only_embeddings_are_refused_in_one_line(workspace: Path, tmp_path: Path) -> None:
    torchvision = ["--model", "resnet18", "--weights", "none", "--crop", "32", *RUN]
    cache = ["--cache", tmp_path / "cache"]

    refused = run_cli("train", workspace / "train", *torchvision, *cache, "--head", "zeroshot")

    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        "Error: --head zeroshot needs an image-text model: torchvision:resnet18 is an "
        "image-only model (text needs --model open_clip:ARCH/TAG)"
    ]
    assert not list((tmp_path / "cache").rglob("*.h5"))  # refused before embedding anything
    # Among other heads (--head all), it is left out with the reason, and the rest train.
    mixed = run_cli("train", workspace / "train", *torchvision, *cache, "--head", "ncm",
                    "--head", "zeroshot", "-o", tmp_path / "head")  # fmt: skip
    assert mixed.exit_code == 0, mixed.output
    assert "zeroshot left out: torchvision:resnet18 is an image-only model" in mixed.output


def test_the_head_is_built_not_fitted() -> None:
    head = ZeroShotHead.from_text(
        ["cat", "dog"], np.array([[3.0, 0.0], [0.0, 0.5]]), LogitScale(10.0, -2.0)
    )
    scores = head.class_scores(np.array([[2.0, 0.0], [1.0, 1.0]], np.float32))
    c = 10 / np.sqrt(2)
    np.testing.assert_allclose(scores, [[8.0, -2.0], [c - 2, c - 2]], rtol=1e-6)
    assert list(head.predict(np.array([[0.0, 5.0]]))) == ["dog"]
    assert clone(head).get_params() == head.get_params() == {"prompts": "openai"}
    with pytest.raises(NotFittedError):
        ZeroShotHead().predict(np.zeros((1, 2)))
    with pytest.raises(HeadstartError, match="built from class names") as caught:
        ZeroShotHead().fit(np.zeros((4, 2)), np.array(["a", "b", "a", "b"]))
    assert "\n" not in str(caught.value)
    with pytest.raises(HeadstartError, match="--prompts takes openai, simple or a text file"):
        prompt_templates("no-such-set")


def test_a_trained_tiny_clip_names_unseen_pictures(tiny_clip, tmp_path: Path) -> None:
    """Real behaviour: a tiny CLIP trained here on captioned shapes, loaded as users load their
    own weights, classifies held-out pictures from their class names alone."""
    from tiny_clip import CLASSES, write_images

    tiny = tiny_clip
    write_images(tmp_path / "labelled", per_class=3, seed=99)  # folders "red circle", ...
    write_images(tmp_path / "held_out", per_class=5, seed=1234)
    common = [*RUN, "--cache", tmp_path / "cache"]
    model = ["--model", f"open_clip:{tiny.config_name}", "--weights", tiny.checkpoint]

    trained = run_cli("train", tmp_path / "labelled", *model, *common, "--head", "zeroshot",
                      "-o", tmp_path / "head")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluated = run_cli("evaluate", tmp_path / "head", tmp_path / "held_out", *common[2:],
                        "--json", tmp_path / "metrics.json")  # fmt: skip

    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    chance = 1 / len(CLASSES)
    assert metrics["n"] == 5 * len(CLASSES)
    assert metrics["accuracy"] > 0.8, (
        f"zero-shot accuracy {metrics['accuracy']} (chance {chance:.3f})"
    )
