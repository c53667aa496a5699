"""End to end through the command line (in-process with CliRunner) and the Python API."""

import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from click.testing import CliRunner
from helpers import (
    BF16_UNIT_ROUNDOFF,
    FAST_ARGS,
    PRECISIONS,
    make_folder,
    make_odd_images,
    write_image,
)
from PIL import Image
from torchvision.models import resnet18

from headstart.cache import EmbeddingCache
from headstart.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_SOME_FAILED, main
from headstart.extract import ExtractOptions, PreprocessOverrides, extract
from headstart.models.embedder import Embedder


def run(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_embeddings_equal_a_direct_forward_pass(
    image_folder: Path, cache_dir: Path, precision: str
) -> None:
    result = run(
        "extract",
        image_folder,
        *FAST_ARGS,
        "--precision",
        precision,
        "--store-dtype",
        "float32",
        "--cache",
        cache_dir,
        "-q",
    )
    assert result.exit_code == 0, result.output
    paths = sorted(str(p) for p in image_folder.rglob("*.jpg"))

    store = EmbeddingCache(cache_dir).open()
    assert store.fingerprint.recipe["precision"] == precision
    stored = store.load_files(paths)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = resnet18()
    model.fc = torch.nn.Identity()
    preprocess = T.Compose(
        [
            T.Resize(40),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        direct = model.eval()(batch).numpy()  # in fp32: the reference for both precisions
    if precision == "fp32":
        np.testing.assert_allclose(stored, direct, rtol=1e-4, atol=1e-5)
        return
    # bf16 rounds every convolution's inputs and weights to 8 significant bits; through
    # resnet18 the errors add up to about 2.4 roundings (measured) relative to each vector's
    # length. The bound is 8 roundings (0.031): any two of these images are 0.26 apart, and a
    # wrong image, crop offset, channel order or mean/std moves a vector by 0.15 or more.
    error = np.linalg.norm(stored - direct, axis=1) / np.linalg.norm(direct, axis=1)
    assert error.max() <= 8 * BF16_UNIT_ROUNDOFF, error
    assert error.min() > 0, "the vectors are fp32's: bf16 was not used"


def test_rerun_computes_nothing_and_new_images_only_themselves(
    image_folder: Path, cache_dir: Path, forward_count: list[int]
) -> None:
    args = ("extract", image_folder, *FAST_ARGS, "--cache", cache_dir, "-q")
    assert run(*args).exit_code == 0
    assert forward_count[0] == 9

    forward_count[0] = 0
    rerun = run(*args)
    assert forward_count[0] == 0
    assert "embedded 0 · from cache 9" in rerun.output

    make_folder(image_folder, {"bird": 3}, start_seed=100)
    shutil.copy(image_folder / "cat" / "cat_000.jpg", image_folder / "dog" / "copy_of_a_cat.jpg")
    result = run(*args)
    assert forward_count[0] == 3  # the copied file's content is already embedded
    assert "embedded 3 · from cache 10" in result.output


def test_bad_files_are_recorded_and_skipped(
    tmp_path: Path, cache_dir: Path, forward_count: list[int]
) -> None:
    corpus = make_odd_images(tmp_path / "odd")
    good = sum(ok for _, ok in corpus.values())
    bad = len(corpus) - good
    args = ("extract", tmp_path / "odd", *FAST_ARGS, "--cache", cache_dir, "-q")

    result = run(*args)

    assert result.exit_code == EXIT_SOME_FAILED
    assert f"embedded {good} " in result.output and f"failed {bad}" in result.output
    with EmbeddingCache(cache_dir).catalog() as catalog:
        ledger = {Path(f.path).name: f.reason for f in catalog.iter_failures()}
    assert ledger.keys() == {p.name for p, ok in corpus.values() if not ok}
    assert "truncated" in ledger["truncated.jpg"] and "empty" in ledger["empty.jpg"]
    assert "decompression bomb" in ledger["bomb.png"]

    forward_count[0] = 0
    rerun = run(*args)
    assert rerun.exit_code == EXIT_SOME_FAILED and forward_count[0] == 0
    assert "in earlier runs" in rerun.output

    # A repaired file is noticed by its new size/mtime, without --retry-failed.
    write_image(corpus["truncated"][0], 7)
    repaired = run(*args)
    assert forward_count[0] == 1 and f"failed {bad - 1}" in repaired.output

    retried = run(*args, "--retry-failed")
    assert f"failed {bad - 1}" in retried.output and "in earlier runs" not in retried.output


def test_layer_option_embeds_an_inner_node(image_folder: Path, cache_dir: Path) -> None:
    result = run(
        "extract", image_folder, *FAST_ARGS, "--layer", "layer3", "--cache", cache_dir, "-q"
    )
    assert result.exit_code == 0, result.output
    assert EmbeddingCache(cache_dir).open().dim == 256


def test_export_npy_csv_and_parquet(image_folder: Path, cache_dir: Path, tmp_path: Path) -> None:
    assert run("extract", image_folder, *FAST_ARGS, "--cache", cache_dir, "-q").exit_code == 0

    assert run("export", cache_dir, "--out", tmp_path / "emb.npy").exit_code == 0
    matrix = np.load(tmp_path / "emb.npy")
    table = (tmp_path / "emb.csv").read_text().splitlines()
    assert matrix.shape == (9, 512) and len(table) == 10
    row = table[1].split(",")
    store = EmbeddingCache(cache_dir).open()
    np.testing.assert_array_equal(matrix[0], store.load_files([row[1]])[0])
    assert row[2] in ("cat", "dog")

    assert run("export", cache_dir, "--out", tmp_path / "emb.parquet").exit_code == 0
    import pyarrow.parquet as pq

    parquet = pq.read_table(tmp_path / "emb.parquet")
    assert parquet.num_rows == 9 and sorted(set(parquet["label"].to_pylist())) == ["cat", "dog"]
    np.testing.assert_array_equal(np.array(parquet["embedding"].to_pylist()), matrix)


def test_info_shows_fingerprints_and_failures(tmp_path: Path, cache_dir: Path) -> None:
    make_odd_images(tmp_path / "odd")
    run("extract", tmp_path / "odd", *FAST_ARGS, "--cache", cache_dir, "-q")
    fingerprint = EmbeddingCache(cache_dir).open().fingerprint

    result = run("info", cache_dir)

    assert fingerprint.id in result.output and "torchvision:resnet18" in result.output
    assert "5 embeddings x 512" in result.output and "4 failed" in result.output
    listing = run("info", cache_dir, "--failures")
    assert "bomb.png\tdecompression bomb" in listing.output


def test_python_api_loads_by_file_in_chunks(image_folder: Path, cache_dir: Path) -> None:
    options = ExtractOptions(
        model="resnet18",
        weights="none",
        preprocess=PreprocessOverrides(resize_size=40, crop_size=32),
        precision="fp32",
    )
    summary = extract([str(image_folder)], options, cache_dir)
    assert (summary.embedded, summary.failed) == (9, 0)

    store = EmbeddingCache(cache_dir).open(summary.fingerprint)
    paths = sorted(str(p) for p in image_folder.rglob("*.jpg"))
    whole = store.load_files(paths)
    chunks = list(store.iter_files(paths, chunk_rows=4))
    assert [len(c.keys) for c in chunks] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([c.embeddings for c in chunks]), whole)


def test_interrupt_keeps_what_was_computed(
    image_folder: Path, cache_dir: Path, monkeypatch
) -> None:
    original = Embedder.submit
    calls = [0]

    def interrupted_on_third_batch(self, pixels):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return original(self, pixels)

    monkeypatch.setattr(Embedder, "submit", interrupted_on_third_batch)
    result = run(
        "extract",
        image_folder,
        *FAST_ARGS,
        "--batch-size",
        "2",
        "--shard-size",
        "1000",
        "--cache",
        cache_dir,
        "-q",
    )
    assert result.exit_code == EXIT_INTERRUPTED
    assert "interrupted" in result.output
    assert len(EmbeddingCache(cache_dir).open()) == 4  # two batches, published on the way out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "no/such/dir", *FAST_ARGS], "source not found"),
        (["extract", ".", "--model", "resnet5O"], "did you mean resnet50"),
        (["extract", ".", *FAST_ARGS, "--mean", "0.5,0.5"], "three comma-separated"),
        (["info", "no/such/cache"], "not a headstart cache"),
        (["extract", ".", *FAST_ARGS, "--cache", "a-file"], "a cache is a directory"),
        (["export", "no/such/cache", "--out", "x.npy"], "no embeddings in cache"),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    tmp_path: Path, monkeypatch, args, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a cache")
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2)
    assert message in result.output and "Traceback" not in result.output


def test_output_cut_short_by_its_reader_ends_quietly() -> None:
    # `headstart models | head -1`: the reader is gone before the listing is written.
    listing = subprocess.Popen(
        [sys.executable, "-m", "headstart", "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    listing.stdout.close()
    stderr = listing.stderr.read().decode()
    assert listing.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert stderr == ""


def test_fallback_to_random_weights_is_announced(
    image_folder: Path, cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    common = (
        "extract",
        image_folder,
        "--model",
        "resnet18",
        "--crop",
        "32",
        "--cache",
        cache_dir,
        "-q",
    )

    refused = CliRunner().invoke(main, [str(a) for a in common])
    assert refused.exit_code == 1 and "resnet18-f37072fd.pth" in refused.output

    result = run(*common, "--fallback-random")
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "random initialisation" in warnings[0]
    assert "random-init" in EmbeddingCache(cache_dir).open().fingerprint.recipe["weights"]
