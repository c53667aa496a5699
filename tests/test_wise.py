"""Fine-tuning from the zero-shot head (--init zeroshot) and WiSE-FT (--wise), with the tiny
image-text model trained in the tests (tests/tiny_clip.py) on a few generated pictures.

Each run is one short epoch on 24 pictures of 32 px, so the runs take seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODELS, run_cli

from headstart.classify.persist import load_head
from headstart.finetune.wise import mix_states

pytest.importorskip("open_clip")

RUN = ["--precision", "fp32", "--store-dtype", "float32", "-j", "0", "-q"]
LOOP = ["--epochs", "1", "--batch-size", "8", "--augment", "none", "--lr", "1e-3"]
LOOP += ["--warmup", "0", "--patience", "0", "--prompts", "simple"]


@pytest.fixture(scope="module")
def data(tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tiny_clip import write_images

    root = tmp_path_factory.mktemp("wise")
    write_images(root / "train", per_class=2, seed=7)
    write_images(root / "val", per_class=2, seed=8)
    model = ["--model", f"open_clip:{tiny_clip.config_name}", "--weights", tiny_clip.checkpoint]
    return {"root": root, "model": model, "cache": root / "cache"}


def finetune(data: dict, out: Path, *extra: object):
    return run_cli("finetune", data["root"] / "train", "--val", data["root"] / "val",
                   *data["model"], *RUN, *LOOP, "--cache", data["cache"], "-o", out,
                   *extra)  # fmt: skip


def finetuned_run(data: dict, name: str, *extra: object) -> tuple[Path, str]:
    out = data["root"] / name
    result = finetune(data, out, "--init", "zeroshot", *extra)
    assert result.exit_code == 0, result.output
    return out, result.output


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors of a network state, under the backbone file's names."""
    prefix = "features.body."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def original_tower(checkpoint: Path) -> dict[str, torch.Tensor]:
    whole = torch.load(checkpoint, weights_only=True)
    return {k: v for k, v in whole.items() if k.startswith("visual.")}


def embeddings(data: dict, weights: Path) -> tuple[np.ndarray, np.ndarray]:
    from headstart.classify.data import embed_sources
    from headstart.extract import ExtractOptions

    arch = data["model"][1]
    options = ExtractOptions(
        arch, str(weights), precision="fp32", store_dtype="float32", workers=0, device="cpu"
    )
    embedded = embed_sources([str(data["root"] / "val")], options, data["cache"])
    return embedded.X, embedded.labels


def test_zeroshot_start_then_wise_zero_is_the_zeroshot_model(tiny_clip, data) -> None:
    run, output = finetuned_run(data, "alpha0", "--wise", "0")
    zeroshot = load_head(run / "zeroshot")
    zeroshot_doc = json.loads((run / "zeroshot" / "head.json").read_text())
    records = history(run)
    # Epoch 0, the network before any step, scores as the zero-shot head on cached embeddings.
    assert len(records) == 2
    assert records[0]["val_accuracy"] == pytest.approx(zeroshot_doc["metrics"]["accuracy"])
    assert "epoch 0 (zero-shot head)" in output

    # alpha 0 publishes the original tower and the zero-shot head: the same predictions.
    backbone = torch.load(run / "backbone.pt", weights_only=True)
    expected = original_tower(tiny_clip.checkpoint)
    assert backbone.keys() == expected.keys()
    assert all(torch.equal(backbone[k], expected[k]) for k in expected)
    published = load_head(run / "head")
    assert published.head.head_name == "zeroshot"
    np.testing.assert_array_equal(published.head.coef_, zeroshot.head.coef_)
    X_start, _ = embeddings(data, tiny_clip.checkpoint)
    X_mixed, _ = embeddings(data, run / "backbone.pt")
    np.testing.assert_allclose(X_mixed, X_start, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        published.head.predict_proba(X_mixed), zeroshot.head.predict_proba(X_start), atol=1e-5
    )

    # The table: zero-shot, the linear probe, fine-tuned and each mix; wise.json records them.
    for row in ("zero-shot (alpha 0)", "linear probe, frozen embeddings", "fine-tuned (alpha 1",
                "WiSE alpha 0 "):  # fmt: skip
        assert row in output, output
    wise = json.loads((run / "wise.json").read_text())
    assert wise["chosen_alpha"] == 0.0 and [a["alpha"] for a in wise["alphas"]] == [0.0]
    assert wise["zeroshot"]["val_accuracy"] == records[0]["val_accuracy"]
    assert wise["linear_probe"]["val_accuracy"] >= 0
    assert json.loads((run / "config.json").read_text())["init"] == "zeroshot"


def test_wise_one_is_fine_tuning_and_a_mix_is_the_linear_mix(tiny_clip, data) -> None:
    run, output = finetuned_run(data, "alpha1", "--wise", "1")
    finetuned = torch.load(run / "checkpoint.pt", weights_only=True)["network"]
    backbone = torch.load(run / "backbone.pt", weights_only=True)
    assert all(torch.equal(backbone[k], v) for k, v in tower(finetuned).items())
    head = load_head(run / "head").head
    np.testing.assert_array_equal(head.coef_, finetuned["classifier.weight"].numpy())
    # The saved head classifies the fine-tuned embeddings as the network did.
    best = history(run)[-1]
    X, labels = embeddings(data, run / "backbone.pt")
    assert (head.predict(X) == labels).mean() == pytest.approx(best["val_accuracy"], abs=1e-6)
    evaluated = run_cli("evaluate", run / "head", data["root"] / "val", "--cache", data["cache"],
                        "-q")  # fmt: skip
    assert evaluated.exit_code == 0 and f"{best['val_accuracy']:.4f}" in evaluated.output

    run, output = finetuned_run(data, "mixed", "--wise", "0.25,0.5", "--wise", "0.5")
    assert "WiSE alpha 0.25" in output and "WiSE alpha 0.5" in output
    wise = json.loads((run / "wise.json").read_text())
    assert [a["alpha"] for a in wise["alphas"]] == [0.25, 0.5]
    alpha = wise["chosen_alpha"]
    start = original_tower(tiny_clip.checkpoint)
    finetuned = torch.load(run / "checkpoint.pt", weights_only=True)["network"]
    backbone = torch.load(run / "backbone.pt", weights_only=True)
    mixed = mix_states(start, tower(finetuned), alpha)
    assert any(not torch.equal(start[k], finetuned[f"features.body.{k}"]) for k in start)
    for key, value in start.items():
        expected = (1 - alpha) * value + alpha * finetuned[f"features.body.{key}"]
        assert torch.equal(backbone[key], expected) and torch.equal(mixed[key], expected), key
    zeroshot = load_head(run / "zeroshot").head
    weight = torch.from_numpy(zeroshot.coef_)
    expected = (1 - alpha) * weight + alpha * finetuned["classifier.weight"]
    np.testing.assert_array_equal(load_head(run / "head").head.coef_, expected.numpy())

    # headstart report shows the mixes beside the references, the published one marked.
    page = run / "report.html"
    assert run_cli("report", run, "-o", page).exit_code == 0
    html = page.read_text()
    wise_table = html[html.index('<table id="wise">') :]
    wise_table = wise_table[: wise_table.index("</table>")]
    assert "WiSE alpha 0.25" in wise_table and "WiSE alpha 0.5" in wise_table
    chosen_row = wise_table[wise_table.index('class="chosen"') :].split("</tr>")[0]
    assert f"WiSE alpha {alpha}<" in chosen_row
    assert "Epoch 0 is the zero-shot head" in html


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--wise", "0.5"], "--wise mixes the fine-tuned model with the zero-shot one"),
        (["--init", "zeroshot", "--wise", "1.5"], "--wise coefficients lie in [0, 1]"),
        (["--init", "zeroshot", "--wise", "x"], "--wise takes mixing coefficients"),
    ],
)
def test_bad_wise_requests_fail_in_one_line(data, tmp_path: Path, extra, message) -> None:
    result = finetune(data, tmp_path / "run", *extra)
    assert result.exit_code != 0 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_an_image_only_backbone_cannot_start_zero_shot(data, tmp_path: Path) -> None:
    result = run_cli("finetune", data["root"] / "train", "--model",
                     f"{TINY_MODELS}:stripes_features", "--weights", "none", *RUN,
                     "--cache", tmp_path / "cache", "-o", tmp_path / "run", "--init",
                     "zeroshot")  # fmt: skip
    assert result.exit_code != 0, result.output
    assert "--init zeroshot needs an image-text model" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()
