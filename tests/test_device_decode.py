"""``--decode device``: JPEGs left encoded by the reading workers and decoded in batches where
the model runs. On a GPU that is nvJPEG; here it is the same code on the CPU (torchvision's
decode_jpeg on CPU tensors), so the whole path runs on every machine: files, tar shards and
table rows, awkward files left to the workers, a damaged JPEG recorded as on the CPU path."""

from __future__ import annotations

import csv
import dataclasses
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import make_odd_images, photo_like_jpeg
from PIL import Image

from headstart.cache import EmbeddingCache
from headstart.extract import ExtractOptions, ExtractSummary, PreprocessOverrides, extract


def _collection(root: Path) -> list[str]:
    """A folder of photo-like JPEGs and awkward files, a tar shard and a CSV table of paths."""
    folder = root / "photos"
    folder.mkdir(parents=True)
    for i in range(9):
        size = (200 + 40 * i, 150 + 30 * (i % 4))
        (folder / f"photo{i}.jpg").write_bytes(photo_like_jpeg(size, seed=i))
    progressive = folder / "progressive.jpg"
    Image.open(io.BytesIO(photo_like_jpeg((240, 180), seed=20))).save(progressive, progressive=True)
    good = photo_like_jpeg((300, 200), seed=21)
    (folder / "cut.jpg").write_bytes(good[: len(good) // 2])  # a valid header, damaged data
    make_odd_images(root / "odd")
    shard = root / "shard-00000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(5):
            data = photo_like_jpeg((180, 240), seed=40 + i)
            member = tarfile.TarInfo(f"{i:06d}.jpg")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    table_folder = root / "rows"
    table_folder.mkdir()
    with open(root / "rows.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label"])
        for i in range(4):
            path = table_folder / f"row{i}.jpg"
            path.write_bytes(photo_like_jpeg((260, 260), seed=60 + i))
            writer.writerow([str(path), f"class{i % 2}"])
    return [str(folder), str(root / "odd"), str(shard), str(root / "rows.csv")]


def _extract(sources: list[str], cache: Path, decode: str, workers: int) -> ExtractSummary:
    preprocess = PreprocessOverrides(resize_size=40, crop_size=32)
    options = ExtractOptions(
        "resnet18", "none", preprocess=preprocess, device="cpu", precision="fp32"
    )
    options = dataclasses.replace(options, decode=decode, workers=workers, batch_size=4)
    return extract(sources, options, cache)


def _contents(cache: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with EmbeddingCache(cache).catalog() as catalog:
        ledger = {Path(f.path).name: f.reason for f in catalog.iter_failures()}
    store = EmbeddingCache(cache).open()
    keys = np.concatenate(list(store.iter_sorted_keys()))
    return dict(zip(keys.tolist(), store.get(keys), strict=True)), ledger


@pytest.mark.parametrize("workers", [0, 2])
def test_jpegs_decoded_on_the_device_embed_as_the_workers_decode_them(
    tmp_path: Path, workers: int
) -> None:
    sources = _collection(tmp_path / "data")
    on_cpu = _extract(sources, tmp_path / "cpu", "cpu", workers)
    on_device = _extract(sources, tmp_path / "device", "device", workers)
    for summary in (on_cpu, on_device):
        assert (summary.listed, summary.embedded, summary.failed) == (29, 24, 5)
    # 9 photos and the cut one, 5 tar members, 4 table rows, the odd folder's good and
    # truncated JPEGs; the progressive and CMYK ones, PNGs and the rest stay with the workers.
    assert (on_cpu.decoded_on_device, on_device.decoded_on_device) == (0, 21)

    cpu_vectors, cpu_ledger = _contents(tmp_path / "cpu")
    device_vectors, device_ledger = _contents(tmp_path / "device")
    assert device_vectors.keys() == cpu_vectors.keys() and len(cpu_vectors) >= 20
    for key, vector in cpu_vectors.items():
        other = device_vectors[key]
        cosine = float(vector @ other / (np.linalg.norm(vector) * np.linalg.norm(other)))
        assert cosine > 0.999, key
    # The damaged JPEG went to the device, failed there, and is recorded with the CPU's reason.
    assert device_ledger == cpu_ledger and "truncated" in device_ledger["cut.jpg"]
