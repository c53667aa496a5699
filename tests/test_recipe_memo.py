"""An unchanged rerun finishes without torch, from the remembered recipe; anything that could
change the recipe (a weights file, the model's code, a stale memo) is noticed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner
from helpers import FAST_ARGS, TINY_MODELS, make_folder
from hostile import summary_counts

from headstart.cache import Fingerprint
from headstart.cli import main


def run(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fingerprint_id(output: str) -> str:
    return output.split()[1]


def test_an_unchanged_rerun_imports_no_torch(image_folder: Path, cache_dir: Path) -> None:
    args = ["extract", str(image_folder), *FAST_ARGS, "--cache", str(cache_dir), "-q"]
    first = run(*args)
    check = (
        "import sys\n"
        "from headstart.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    rerun = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert summary_counts(rerun.stdout) == {
        "listed": 9,
        "embedded": 0,
        "from cache": 9,
        "failed": 0,
    }
    assert fingerprint_id(rerun.stdout) == fingerprint_id(first)
    assert "torch imported: False" in rerun.stdout


def test_changed_weights_or_model_code_give_a_new_fingerprint(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"a": 3})
    model_file = tmp_path / "models.py"
    shutil.copy(TINY_MODELS, model_file)
    weights = tmp_path / "w.pt"
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_copy", model_file)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    torch.manual_seed(1)
    torch.save(tiny.tiny_features().state_dict(), weights)
    args = [
        *("extract", images, "--model", f"{model_file}:tiny_features", "--weights", weights),
        *("--resize", "32", "--crop", "32", "--cache", tmp_path / "cache", "-q", "-j", "0"),
    ]
    first = run(*args)
    assert summary_counts(run(*args))["embedded"] == 0

    torch.manual_seed(2)
    torch.save(tiny.tiny_features().state_dict(), weights)  # other weights, same path
    retrained = run(*args)
    assert fingerprint_id(retrained) != fingerprint_id(first)
    assert summary_counts(retrained)["embedded"] == 3

    model_file.write_text(model_file.read_text() + "\n# edited\n")
    edited = run(*args)
    assert fingerprint_id(edited) not in (fingerprint_id(first), fingerprint_id(retrained))
    assert summary_counts(edited)["embedded"] == 3


def test_a_stale_remembered_recipe_is_resolved_again(image_folder: Path, cache_dir: Path) -> None:
    args = ["extract", image_folder, *FAST_ARGS, "--cache", cache_dir, "-q"]
    first = run(*args)
    (memo,) = (cache_dir / "recipes").glob("*.json")
    document = json.loads(memo.read_text())
    document["recipe"]["precision"] = "bf16"  # as if the machine had changed under the memo
    document["id"] = Fingerprint(document["recipe"]).id
    memo.write_text(json.dumps(document))

    again = run(*args)

    assert fingerprint_id(again) == fingerprint_id(first)
    assert summary_counts(again)["embedded"] == 0 and summary_counts(again)["from cache"] == 9
    assert json.loads(memo.read_text())["id"] == fingerprint_id(first)
