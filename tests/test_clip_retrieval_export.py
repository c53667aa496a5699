"""`headstart export --format clip-retrieval`: the layout clip-retrieval writes, read back by the
real autofaiss and embedding-reader packages, locally and on a moto S3 server."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL_FP32, TINY_MODELS, make_folder, run_cli
from test_tar_shards import labelled_shard

from headstart.cache import EmbeddingCache

pq = pytest.importorskip("pyarrow.parquet")
embedding_reader = pytest.importorskip("embedding_reader")

TINY = ["--model", f"{TINY_MODELS}:tiny_features", *SMALL_FP32, "-q", "-j", "0"]
META = ["image_path", "url", "caption", "label", "key"]


def normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def read_back(folder: str, columns: list[str]) -> tuple[np.ndarray, list[dict]]:
    """Every row of an export through embedding-reader's parquet_npy reader, in order."""
    reader = embedding_reader.EmbeddingReader(
        embeddings_folder=f"{folder}/img_emb",
        metadata_folder=f"{folder}/metadata",
        meta_columns=columns,
        file_format="parquet_npy",
    )
    vectors, rows = [], []
    for block, meta in reader(batch_size=5, start=0, end=reader.count, show_progress=False):
        vectors.append(block)
        # pandas reads a null string as NaN: back to None, as it was written.
        records = meta[columns].to_dict("records")
        rows.extend({k: None if v != v else v for k, v in r.items()} for r in records)
    return np.concatenate(vectors), rows


def extracted(tmp_path: Path) -> Path:
    """A cache of 9 folder images (labelled cat/dog, no caption) and 8 shard samples (a
    class index and a caption each)."""
    make_folder(tmp_path / "images", {"cat": 5, "dog": 4}, start_seed=100)
    labelled_shard(tmp_path / "shards" / "0.tar", 0, 8)
    cache = tmp_path / "cache"
    result = run_cli(
        "extract", tmp_path / "images", tmp_path / "shards" / "0.tar", *TINY, "--cache", cache
    )
    assert result.exit_code == 0, result.output
    return cache


def test_the_layout_reads_back_through_embedding_reader_and_autofaiss(tmp_path: Path) -> None:
    cache = extracted(tmp_path)
    out = tmp_path / "export"
    result = run_cli(
        "export", cache, "--format", "clip-retrieval", "--out", out, "--rows-per-part", "5"
    )
    assert result.exit_code == 0, result.output
    assert "wrote 17 rows x 8 in 8 files" in result.output
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [
        f"img_emb_{n:04d}.npy" for n in range(4)
    ]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [
        f"metadata_{n:04d}.parquet" for n in range(4)
    ]
    assert not (out / "text_emb").exists()  # an image-only model
    first = np.load(out / "img_emb" / "img_emb_0000.npy")
    assert first.dtype == np.float16 and first.shape == (5, 8)
    assert pq.read_table(out / "metadata" / "metadata_0003.parquet").num_rows == 2

    vectors, rows = read_back(str(out), META)
    assert len(rows) == 17 and vectors.shape == (17, 8)
    store = EmbeddingCache(cache).open()
    expected = normalised(store.get([row["key"] for row in rows]))
    np.testing.assert_allclose(vectors, expected, atol=2e-3)  # float16
    by_name = {Path(r["image_path"]).name: r for r in rows}
    assert by_name["cat_000.jpg"]["label"] == "cat" and by_name["cat_000.jpg"]["caption"] is None
    sample = by_name["0.tar#000006.jpg"]
    assert sample["label"] == "0" and sample["caption"] == "picture 6"
    assert all(r["url"] is None for r in rows)  # nothing came from a URL

    # autofaiss builds an index from img_emb/ that scores as exact inner products over the
    # exported vectors do.
    autofaiss = pytest.importorskip("autofaiss")
    index, _ = autofaiss.build_index(
        embeddings=str(out / "img_emb"),
        index_path=str(tmp_path / "knn.index"),
        index_infos_path=str(tmp_path / "infos.json"),
        metric_type="ip",
        max_index_memory_usage="100MB",
        current_memory_available="500MB",
        save_on_disk=False,
        verbose=40,
    )
    assert index.ntotal == 17
    queries = vectors.astype(np.float32)
    scores, found = index.search(queries, 3)
    exact = queries @ queries.T
    np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :3], atol=1e-4)
    assert (np.take_along_axis(exact, found, axis=1) >= scores - 1e-4).all()

    # A smaller export into the same folder leaves no part of the earlier one behind.
    again = run_cli("export", cache, "--format", "clip-retrieval", "--out", out)
    assert again.exit_code == 0, again.output
    assert [p.name for p in (out / "img_emb").iterdir()] == ["img_emb_0000.npy"]
    assert read_back(str(out), META)[0].shape == (17, 8)


def test_an_image_text_model_writes_the_captions_embeddings_beside(
    tiny_clip, tmp_path: Path
) -> None:
    from tiny_clip import caption, make_image

    from headstart.extract.text import encode_texts

    rng = np.random.default_rng(5)
    members = []
    pictures = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "square")]
    for number, (colour, shape) in enumerate(pictures):
        png = io.BytesIO()
        make_image(colour, shape, rng).save(png, "PNG")
        members.append((f"{number:04d}.png", png.getvalue()))
        if number != 3:  # the last sample has no caption
            members.append((f"{number:04d}.txt", caption(colour, shape).encode()))
    shard = tmp_path / "shape.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cache = tmp_path / "cache"
    model = ["--model", f"open_clip:{tiny_clip.config_name}", "--weights", tiny_clip.checkpoint]
    common = [*model, "--precision", "fp32", "-q", "-j", "0", "--cache", cache]
    assert run_cli("extract", shard, *common).exit_code == 0

    out = tmp_path / "export"
    result = run_cli("export", cache, "--format", "clip-retrieval", "--out", out)
    assert result.exit_code == 0, result.output
    assert "3 captions embedded in text_emb/" in result.output
    texts = np.load(out / "text_emb" / "text_emb_0000.npy")
    images, rows = read_back(str(out), [*META, "has_caption"])
    assert texts.dtype == np.float16 and texts.shape == images.shape == (4, 32)
    assert [r["has_caption"] for r in rows] == [True, True, True, False]
    assert not texts[3].any()  # no caption: a zero row, aligned
    fingerprint = EmbeddingCache(cache).open().fingerprint
    expected = normalised(encode_texts([r["caption"] for r in rows[:3]], fingerprint, cache))
    np.testing.assert_allclose(texts[:3].astype(np.float32), expected, atol=2e-3)
    # The trained model's image and caption agree: each picture's best caption is its own.
    scores = images[:3].astype(np.float32) @ texts[:3].astype(np.float32).T
    assert scores.argmax(axis=1).tolist() == [0, 1, 2]

    # Without text, the earlier export's text parts go: they would no longer match the rows.
    plain = run_cli("export", cache, "--format", "clip-retrieval", "--out", out, "--no-text")
    assert plain.exit_code == 0 and not list((out / "text_emb").iterdir())


def test_an_image_only_model_refuses_text_in_one_line(tmp_path: Path) -> None:
    cache = extracted(tmp_path)
    result = run_cli(
        "export", cache, "--format", "clip-retrieval", "--out", tmp_path / "x", "--text"
    )
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert "image-only model" in line
    # The single-file formats write local files only, and say so.
    npy = run_cli("export", cache, "--out", "s3://bucket/emb.npy")
    assert npy.exit_code != 0 and "--format clip-retrieval writes to URLs" in npy.output


def test_export_to_an_s3_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3fs = pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from object_store import s3_server

    cache = extracted(tmp_path)
    with s3_server() as s3:
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        s3.client().create_bucket(Bucket="exports")
        result = run_cli(
            "export",
            cache,
            "--format",
            "clip-retrieval",
            "--out",
            "s3://exports/run1",
            "--rows-per-part",
            "10",
        )
        assert result.exit_code == 0, result.output
        listed = s3.client().list_objects_v2(Bucket="exports")["Contents"]
        assert sorted(o["Key"] for o in listed) == [
            "run1/img_emb/img_emb_0000.npy",
            "run1/img_emb/img_emb_0001.npy",
            "run1/metadata/metadata_0000.parquet",
            "run1/metadata/metadata_0001.parquet",
        ]
        remote_vectors, remote_rows = read_back("s3://exports/run1", META)
    run_cli("export", cache, "--format", "clip-retrieval", "--out", tmp_path / "local")
    local_vectors, local_rows = read_back(str(tmp_path / "local"), META)
    assert remote_rows == local_rows and len(remote_rows) == 17
    np.testing.assert_array_equal(remote_vectors, local_vectors)
