"""``headstart train`` in bounded memory: as the rows grow 8x under one small budget, the peak
resident memory stays under the budget and grows by at most ``MARGIN_MB``, and the head is the
one the in-memory path fits (tolerances as in tests/test_streaming.py). Heads and budgets that
cannot fit are refused in one line before any vector is read.

Peak RSS is measured as bench/peak_memory.py does (``VmHWM`` of a fresh process). Each cache
is first trained on with a budget of 1 MB: the refusal says how much the process holds before
any vector is read (torch alone is hundreds of MB), and it leaves the model's recipe resolved
in the cache, as a second run finds it.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_cache import lay_out

from headstart.cache import EmbeddingCache
from headstart.classify.data import read_embedded, stratified_split
from headstart.classify.linear import LogisticRegressionHead
from headstart.classify.persist import load_head

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peak_memory import run_measured

MODEL = ["-m", "resnet18", "-w", "none", "--device", "cpu", "--precision", "fp32", "--no-compile"]
SMALL, DIM, CLASSES = 2000, 512, 10
HEADROOM_MB = 48  # the budget: what the process holds before reading vectors, plus this
MARGIN_MB = 32  # the most the peak may grow from SMALL to 8 x SMALL rows


def _layout(root: Path, rows: int) -> Path:
    from headstart.extract import ExtractOptions, resolve_recipe

    options = ExtractOptions(model="resnet18", weights="none", device="cpu", precision="fp32")
    return lay_out(root, resolve_recipe(options).fingerprint, rows, DIM, CLASSES)


def _train(images: Path, *extra: str):
    cache, out = images.parent / "cache", images.parent / "head"
    return run_measured(["train", str(images), *MODEL, "--cache", str(cache), "-q", "-o",
                         str(out), *extra])  # fmt: skip


def _in_use_mb(images: Path, *extra: str) -> float:
    refused = _train(images, "--max-memory", "1M", *extra)
    assert refused.returncode == 1, refused.output
    message = [line for line in refused.output.splitlines() if line.strip()]
    assert len(message) == 1 and "Traceback" not in refused.output, refused.output
    found = re.search(r"beyond the ([0-9.]+) (MB|GB) already in use", message[0])
    assert found, message[0]
    return float(found.group(1)) * (1024 if found.group(2) == "GB" else 1)


@pytest.mark.slow  # about a minute on 2 cores: six runs of `headstart train`
def test_train_stays_in_its_budget_while_rows_grow_eightfold(tmp_path: Path) -> None:
    images = {rows: _layout(tmp_path / str(rows), rows) for rows in (SMALL, 8 * SMALL)}
    held = {rows: _in_use_mb(path) for rows, path in images.items()}
    budget = int(held[SMALL]) + HEADROOM_MB
    peaks = {}
    for rows, path in images.items():
        run = _train(path, "--max-memory", f"{budget}M")
        assert run.returncode == 0, run.output
        peaks[rows] = run.main_mb
    print(f"held before reading {held}, budget {budget} MB, peaks {peaks}")
    assert max(peaks.values()) <= budget
    assert peaks[8 * SMALL] - peaks[SMALL] <= MARGIN_MB
    # The MLP would hold every vector (~100 MB of them here): given the same headroom, it is
    # refused before it reads one, and told which heads stream.
    mlp_budget = int(_in_use_mb(images[8 * SMALL], "--head", "mlp")) + HEADROOM_MB
    refused = _train(images[8 * SMALL], "--head", "mlp", "--max-memory", f"{mlp_budget}M")
    assert refused.returncode == 1 and "use --head logreg or --head ridge" in refused.output

    # The streamed head is the in-memory path's: the same split, fitted on arrays.
    large = images[8 * SMALL]
    cache = EmbeddingCache(large.parent / "cache")
    loaded = load_head(large.parent / "head")
    data = read_embedded([str(large)], cache, loaded.fingerprint)
    labels = data.labels.astype(str)
    train_rows, _ = stratified_split(labels, 0.2, 0)
    X = data.X[train_rows]
    in_memory = LogisticRegressionHead(device="cpu").fit(X, labels[train_rows])
    scale = float(np.abs(in_memory.coef_).max())
    np.testing.assert_allclose(loaded.head.coef_, in_memory.coef_, atol=1e-3 * scale)
    assert np.mean(loaded.head.predict(X) == in_memory.predict(X)) >= 0.995


def test_a_budget_too_small_for_any_head_is_refused_in_one_line(tmp_path: Path) -> None:
    images = _layout(tmp_path, 400)
    run = _train(images, "--head", "ridge", "--max-memory", "100M")
    assert run.returncode == 1 and "Traceback" not in run.output
    assert "give a larger --max-memory" in run.output and "ridge" in run.output
    assert not (tmp_path / "head").exists()


def test_evaluate_and_predict_answer_block_by_block_within_a_budget(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from headstart.classify.workflow import proba_in_blocks
    from headstart.cli import main

    images = _layout(tmp_path, 600)
    cache, head = str(tmp_path / "cache"), str(tmp_path / "head")
    runner = CliRunner()
    trained = runner.invoke(
        main, ["train", str(images), *MODEL, "--cache", cache, "--head", "ncm", "-q", "-o", head]
    )
    assert trained.exit_code == 0, trained.output
    loaded = load_head(head)
    data = read_embedded([str(images)], EmbeddingCache(cache), loaded.fingerprint)
    in_blocks = proba_in_blocks(loaded.head, data, block_rows=64)
    # The same answers as all rows at once (up to the matrix product's summation order).
    np.testing.assert_allclose(in_blocks, loaded.head.predict_proba(data.X), atol=1e-6)
    for verb in ("evaluate", "predict"):
        given = [verb, head, str(images), "--cache", cache, "-q"]
        answered = runner.invoke(main, given)
        assert answered.exit_code == 0, answered.output
        refused = runner.invoke(main, [*given, "--max-memory", "1M"])
        assert refused.exit_code == 1 and "give a larger --max-memory" in refused.output
        assert len(refused.output.strip().splitlines()) == 1, refused.output
