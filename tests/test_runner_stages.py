"""The runner's stages (read, decode, forward, write) and its policies, each on its own."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST_ARGS, make_folder

from headstart.cache.catalog import FailureRecord
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KEY_DTYPE, KeySet
from headstart.cli import main
from headstart.extract import ExtractOptions, ExtractSummary, PreprocessOverrides, extract
from headstart.extract.policies import (
    COMPILE_PROBE_BATCHES,
    CompilePolicy,
    compile_pays_off,
    fresh_rows,
    record_failures,
)
from headstart.extract.stages import STAGES, StageClock, bounding_stage, describe_stages

STAGES_LINE = re.compile(
    r"stages: read \d+\.\d s · decode \d+\.\d s \([^)]*\) · forward \d+\.\d s"
    r" · write \d+\.\d s; (read|forward|write) bounds this run"
)


def small_options(**runtime: object) -> ExtractOptions:
    return ExtractOptions(
        model="resnet18",
        weights="none",
        preprocess=PreprocessOverrides(resize_size=40, crop_size=32),
        precision="fp32",
        **runtime,
    )


def keys(*names: str) -> np.ndarray:
    return np.array([name.encode() * 64 for name in names], dtype=KEY_DTYPE)


def failures(count: int, start: int = 0) -> list[FailureRecord]:
    return [FailureRecord(f"bad_{i}.jpg", 1, 1, "broken") for i in range(start, start + count)]


def test_stage_times_are_there_and_fit_in_the_run(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"cat": 6, "dog": 5})
    shutil.copy(images / "cat" / "cat_000.jpg", images / "cat" / "copy.jpg")  # same batch

    summary = extract([str(images)], small_options(batch_size=4, workers=1), tmp_path / "cache")

    assert (summary.embedded, summary.from_cache) == (11, 1)  # the copy embedded once
    seconds = summary.stage_seconds
    assert set(seconds) == set(STAGES) and summary.loader_workers == 1
    assert all(value >= 0 for value in seconds.values()), seconds
    assert seconds["decode"] > 0 and seconds["forward"] > 0, seconds
    # decode runs in the worker beside the others; read, forward and write take turns.
    assert sum(seconds.values()) <= summary.seconds + seconds["decode"]


def test_a_run_with_nothing_to_embed_has_zero_stage_times(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"cat": 2})
    extract([str(images)], small_options(workers=0), tmp_path / "cache")

    rerun = extract([str(images)], small_options(workers=0), tmp_path / "cache")

    assert rerun.embedded == 0 and rerun.stage_seconds == dict.fromkeys(STAGES, 0.0)


def test_verbose_extract_logs_the_stages_and_plain_extract_does_not(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_folder(images, {"cat": 3})
    args = ["extract", str(images), *FAST_ARGS, "--workers", "0", "-q"]
    runner = CliRunner()

    verbose = runner.invoke(main, ["-v", *args, "--cache", str(tmp_path / "a")])
    plain = runner.invoke(main, [*args, "--cache", str(tmp_path / "b")])

    assert verbose.exit_code == 0 and plain.exit_code == 0, verbose.output + plain.output
    lines = [line for line in verbose.stderr.splitlines() if "stages:" in line]
    assert len(lines) == 1 and STAGES_LINE.search(lines[0]), verbose.stderr
    assert "(in the main process, within read)" in lines[0]
    assert "embedded 3" in plain.output and "stages:" not in plain.output + plain.stderr


def test_the_stages_line_names_the_longest_main_process_stage() -> None:
    seconds = {"read": 1.2, "decode": 3.4, "forward": 5.6, "write": 0.1}
    assert describe_stages(seconds, workers=2) == (
        "stages: read 1.2 s · decode 3.4 s (2 workers, summed) · forward 5.6 s · write 0.1 s;"
        " forward bounds this run"
    )
    # Decoding in parallel workers bounds nothing by itself: the wait for it shows as read.
    loader_bound = {"read": 4.0, "decode": 9.0, "forward": 2.0, "write": 0.5}
    assert bounding_stage(loader_bound) == "read"
    assert "(1 worker)" in describe_stages(loader_bound, workers=1)


def test_the_stage_clock_counts_waiting_for_each_item_and_failed_blocks() -> None:
    seconds: dict[str, float] = {}
    clock = StageClock(seconds)

    def slow(count: int):
        for i in range(count):
            time.sleep(0.002)
            yield i

    assert list(clock.timed("read", slow(3))) == [0, 1, 2]
    assert seconds["read"] >= 0.006
    with pytest.raises(KeyboardInterrupt), clock.timing("forward"):
        time.sleep(0.002)
        raise KeyboardInterrupt
    assert seconds["forward"] >= 0.002


def test_fresh_rows_embeds_a_key_once_per_run() -> None:
    seen = KeySet(keys("c"))
    batch = keys("a", "b", "a", "c", "b")

    assert fresh_rows(batch, seen).tolist() == [True, True, False, False, False]
    seen.add(batch[fresh_rows(batch, seen)])
    assert not fresh_rows(keys("b", "a"), seen).any()
    assert fresh_rows(keys(), seen).tolist() == []


def test_record_failures_counts_all_and_keeps_the_first_examples(tmp_path: Path) -> None:
    summary = ExtractSummary(Fingerprint({"model": "test"}), tmp_path)

    record_failures(summary, failures(4))
    record_failures(summary, [])
    record_failures(summary, failures(8, start=4))
    record_failures(summary, failures(3, start=12))

    assert summary.failed == 15
    assert [f.path for f in summary.failure_examples] == [f"bad_{i}.jpg" for i in range(10)]
    record_failures(summary, failures(2), limit=1)  # a smaller cap keeps what is there
    assert len(summary.failure_examples) == 10 and summary.failed == 17


@pytest.mark.parametrize(
    ("seconds_per_image", "images_left", "pays_off"),
    [
        (0.050, 100, False),  # slow, but 5 s left: compiling costs more than it saves
        (0.001, 10_000_000, False),  # long, but already fast per image
        (0.050, 10_000, True),  # slow and long: 500 s left
    ],
)
def test_compiling_pays_off_only_for_long_slow_runs(
    seconds_per_image: float, images_left: int, pays_off: bool
) -> None:
    assert compile_pays_off(seconds_per_image, images_left) is pays_off


@pytest.mark.parametrize(("total", "verdict"), [(200, False), (100_000, True)])
def test_the_compile_policy_measures_some_batches_then_decides(total: int, verdict: bool) -> None:
    now = [0.0]
    policy = CompilePolicy(total, clock=lambda: now[0])
    embedded, answers = 0, []
    for _ in range(COMPILE_PROBE_BATCHES + 1):
        embedded += 10
        now[0] += 10 * 0.05  # 50 ms per image
        answers.append(policy.decide(embedded))

    assert answers == [None] * COMPILE_PROBE_BATCHES + [verdict]


@pytest.mark.parametrize(("total", "verdict"), [(100_000, False), (10_000_000, True)])
def test_on_cuda_only_the_rest_of_the_run_decides_compiling(total: int, verdict: bool) -> None:
    now = [0.0]
    on_cpu = CompilePolicy(total, clock=lambda: now[0])
    on_cuda = CompilePolicy(total, clock=lambda: now[0], on_cuda=True)
    embedded, answers = 0, []
    for _ in range(COMPILE_PROBE_BATCHES + 1):
        embedded += 256
        now[0] += 256 * 0.0001  # 10,000 images a second: never worth it on the CPU's terms
        answers.append((on_cpu.decide(embedded), on_cuda.decide(embedded)))

    assert answers[-1] == (False, verdict)  # 1,000 s left pays for compiling; 10 s does not
