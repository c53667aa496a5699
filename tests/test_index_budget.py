"""An index build within a memory budget: sizes derived from it, and a budget too small for
the work refused in one line before the build starts."""

from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_ARGS, make_colour_folder, run_cli

from headstart.errors import HeadstartError
from headstart.search.budget import TRAIN_WORKSPACE, plan_build, resident_bytes
from headstart.search.build import build_index
from headstart.search.spec import choose_spec

MB = 2**20


@pytest.mark.parametrize(
    ("n", "d", "budget"),
    [
        (50_000, 512, 512 * MB),  # flat
        (1_000_000, 512, 4096 * MB),  # ivf
        (1_000_000, 512, 600 * MB),  # ivfsq
        (1_000_000, 512, 100 * MB),  # ivfpq
        (10_000_000, 2048, 8192 * MB),  # ivfpq: 10 million at 2048 wide in 8 GB
    ],
)
def test_auto_chooses_a_build_that_fits_its_budget(n: int, d: int, budget: int) -> None:
    spec = choose_spec(n, d, "auto", budget)
    plan = plan_build(spec, n, d, budget)
    block = plan.block_rows * d * 4
    assert plan.resident == resident_bytes(spec, n, d)
    assert plan.resident + block <= budget
    assert plan.train_rows * d * 4 + block <= budget
    if spec.kind != "flat":
        assert plan.train_rows >= spec.nlist  # every list gets a training vector at least


def test_a_budget_caps_the_training_sample_not_the_index(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(20_000, 64)).astype(np.float32)
    spec = choose_spec(20_000, 64, "ivfsq")  # nlist 512: FAISS advises 19,968 training vectors
    budget = resident_bytes(spec, 20_000, 64) + TRAIN_WORKSPACE + 3 * MB
    plan = plan_build(spec, 20_000, 64, budget)
    assert spec.nlist <= plan.train_rows < 39 * spec.nlist
    index, _, recall = build_index(X, spec, plan=plan, target_recall=0.5)
    assert index.ntotal == 20_000 and recall >= 0.5


@pytest.mark.parametrize(("kind", "budget"), [("flat", 100 * MB), ("ivfpq", 4 * MB)])
def test_a_budget_too_small_is_refused_in_one_line(kind: str, budget: int) -> None:
    with pytest.raises(HeadstartError, match="larger --max-memory") as refused:
        plan_build(choose_spec(1_000_000, 512, kind, budget), 1_000_000, 512, budget)
    assert "\n" not in str(refused.value)


def test_index_build_refuses_a_budget_too_small_before_building(tmp_path: Path) -> None:
    make_colour_folder(tmp_path / "images", per_class=2)
    result = run_cli(
        "index", "build", tmp_path / "images", *FAST_ARGS, "--cache", tmp_path / "cache",
        "-o", tmp_path / "index", "--max-memory", "2K", "-q",
    )  # fmt: skip
    assert result.exit_code == 1 and "larger --max-memory" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "index").exists()
