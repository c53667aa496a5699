"""Shards and image folders on object storage and web servers, through real servers on loopback:
moto's S3 server mode and ``python -m http.server`` (tests/object_store.py)."""

from __future__ import annotations

import http.server
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SMALL_FP32, TINY_MODELS, free_port, make_folder, run_cli
from object_store import S3Server, http_server, s3_server
from test_tar_shards import image_bytes, labelled_shard

from headstart.cache import EmbeddingCache
from headstart.cli import EXIT_SOME_FAILED
from headstart.extract import files, remote
from headstart.extract.download import Downloader, DownloadError, DownloadLimits
from headstart.extract.labelled import iter_labelled

pytest.importorskip("s3fs")
pytest.importorskip("moto")

TINY = ["--model", f"{TINY_MODELS}:tiny_features", *SMALL_FP32, "-q"]
BUCKET = "data"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A moto S3 server with one bucket; boto and s3fs find it through the environment."""
    import s3fs

    with s3_server() as server:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        # fsspec keeps one filesystem per set of options, made with the endpoint of its time:
        # an earlier test's server is gone.
        s3fs.S3FileSystem.clear_instance_cache()
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The remote objects streamed as shards while the test runs (``-j 0``: in this process);
    ``opened.sizes``: the size each was opened with."""
    calls = _Calls()
    original = remote.open_stream

    def counting(url: str, size: int | None = None):
        calls.append(url)
        calls.sizes.append(size)
        return original(url, size)

    monkeypatch.setattr(remote, "open_stream", counting)
    return calls


class _Calls(list):
    sizes: list[int | None]

    def __init__(self) -> None:
        super().__init__()
        self.sizes = []


def labelled_rows(sources: list[str], cache: Path) -> list:
    with EmbeddingCache(cache).catalog() as catalog:
        return [row for block in iter_labelled(sources, catalog) for row in block]


def test_s3_shards_by_pattern_glob_and_prefix_resume_and_record_a_404(
    tmp_path: Path, s3: S3Server, forward_count: list[int], opened: list[str]
) -> None:
    for number in range(3):
        labelled_shard(tmp_path / "shards" / f"{number:05d}.tar", number * 5, 5)
    s3.upload_tree(BUCKET, "shards", tmp_path / "shards")
    cache = tmp_path / "cache"
    pattern = f"s3://{BUCKET}/shards/{{00000..00003}}.tar"  # 00003 was never written: a 404

    first = run_cli("extract", pattern, *TINY, "-j", "0", "--cache", cache)
    assert first.exit_code == EXIT_SOME_FAILED, first.output
    assert "listed 16 · embedded 15 · from cache 0 · failed 1" in first.output
    missing = f"s3://{BUCKET}/shards/00003.tar"
    assert f"failed: {missing}: cannot read shard: not found (404)" in first.output
    assert sorted(opened) == [f"s3://{BUCKET}/shards/{n:05d}.tar" for n in range(3)]
    assert forward_count[0] == 15

    with EmbeddingCache(cache).catalog() as catalog:
        ledger = {f.path: f.reason for f in catalog.iter_failures()}
        assert catalog.lookup_shard(f"s3://{BUCKET}/shards/00001.tar").samples == 5
    assert ledger == {missing: "cannot read shard: not found (404)"}
    rows = labelled_rows([pattern], cache)
    assert rows[6].name == f"s3://{BUCKET}/shards/00001.tar#000006.jpg"
    assert [r.label for r in rows] == [str(seed % 3) for seed in range(15)]
    assert rows[6].caption == "picture 6"

    # Reruns under every spelling open no shard and embed nothing; the 404 stays a failure.
    opened.clear()
    for spelling in (pattern, f"s3://{BUCKET}/shards/*.tar", f"s3://{BUCKET}/shards"):
        rerun = run_cli("extract", spelling, *TINY, "-j", "0", "--cache", cache)
        assert "embedded 0 · from cache 15" in rerun.output, (spelling, rerun.output)
    assert opened == [] and forward_count[0] == 15

    # A rewritten object (a new ETag) is read again, and so is the shard that now exists;
    # the others are not opened. Workers are processes here, as in real runs.
    labelled_shard(tmp_path / "new" / "00001.tar", 100, 2)
    labelled_shard(tmp_path / "new" / "00003.tar", 200, 3)
    s3.upload_tree(BUCKET, "shards", tmp_path / "new")
    changed = run_cli("extract", pattern, *TINY, "-j", "2", "--cache", cache)
    assert changed.exit_code == 0, changed.output
    assert "listed 15 · embedded 5 · from cache 10 · failed 0" in changed.output
    with EmbeddingCache(cache).catalog() as catalog:
        assert catalog.count_failures() == 0
        assert catalog.lookup_shard(f"s3://{BUCKET}/shards/00001.tar").samples == 2


def test_an_s3_prefix_is_a_folder_labelled_by_its_first_sub_folder(
    tmp_path: Path, s3: S3Server, forward_count: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folder(tmp_path / "images", {"cat": 3, "dog": 2})
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    urls = s3.upload_tree(BUCKET, "photos", tmp_path / "images")
    cache = tmp_path / "cache"
    local = run_cli("extract", tmp_path / "images", *TINY, "-j", "0", "--cache", cache)
    assert "embedded 5" in local.output, local.output

    source = f"s3://{BUCKET}/photos"
    result = run_cli("extract", source, *TINY, "-j", "0", "--cache", cache)
    assert result.exit_code == 0, result.output
    # The same bytes as the local folder's: one cache entry each, nothing embedded twice.
    assert "listed 5 · embedded 0 · from cache 5 · failed 0" in result.output
    assert forward_count[0] == 5
    rows = labelled_rows([source], cache)
    assert [(r.name, r.label) for r in rows] == [
        (f"s3://{BUCKET}/photos/cat/cat_000.jpg", "cat"),
        (f"s3://{BUCKET}/photos/cat/cat_001.jpg", "cat"),
        (f"s3://{BUCKET}/photos/cat/cat_002.jpg", "cat"),
        (f"s3://{BUCKET}/photos/dog/dog_000.jpg", "dog"),
        (f"s3://{BUCKET}/photos/dog/dog_001.jpg", "dog"),
    ]
    assert f"s3://{BUCKET}/photos/notes.txt" in urls  # uploaded, yet not an image: not listed

    # One object rewritten: only it is read again. Planning takes every object's size and
    # ETag from the listing: no request per object.
    s3.client().put_object(Bucket=BUCKET, Key="photos/dog/dog_001.jpg", Body=image_bytes(999))
    asked: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(files, "stat_object", lambda url: asked.append(url))
        rerun = run_cli("extract", source, *TINY, "-j", "2", "--cache", cache)
    assert "listed 5 · embedded 1 · from cache 4 · failed 0" in rerun.output, rerun.output
    assert forward_count[0] == 6 and asked == []

    absent = run_cli("extract", f"s3://{BUCKET}/nothing-here", *TINY, "--cache", cache)
    assert absent.exit_code != 0 and len(absent.output.strip().splitlines()) == 1
    assert "nothing-here" in absent.output


def test_http_shards_by_brace_pattern(tmp_path: Path, forward_count: list[int]) -> None:
    served = tmp_path / "www"
    for number in range(3):
        labelled_shard(served / f"shard-{number}.tar", number * 4, 4)
    cache = tmp_path / "cache"
    with http_server(served) as server:
        pattern = f"{server.url}/shard-{{0..3}}.tar"  # shard-3 is not there: a 404
        result = run_cli("extract", pattern, *TINY, "-j", "2", "--cache", cache)
        assert result.exit_code == EXIT_SOME_FAILED, result.output
        assert "listed 13 · embedded 12 · from cache 0 · failed 1" in result.output
        assert f"{server.url}/shard-3.tar: cannot read shard: HTTP 404" in result.output
        rows = labelled_rows([pattern], cache)
        assert rows[5].name == f"{server.url}/shard-1.tar#000005.jpg"
        assert rows[5].label == "2" and rows[5].caption == "picture 5"

        rerun = run_cli("extract", pattern, *TINY, "-j", "2", "--cache", cache)
        assert "embedded 0 · from cache 12" in rerun.output, rerun.output
    assert forward_count[0] == 12


def test_a_web_server_folder_is_a_folder(tmp_path: Path, forward_count: list[int]) -> None:
    served = tmp_path / "www"
    make_folder(served / "images", {"cat": 2, "dog": 1})
    cache = tmp_path / "cache"
    with http_server(served) as server:
        source = f"{server.url}/images/"  # the slash says it is a folder
        result = run_cli("extract", source, *TINY, "-j", "0", "--cache", cache)
        assert result.exit_code == 0, result.output
        assert "listed 3 · embedded 3 · from cache 0 · failed 0" in result.output
        rows = labelled_rows([source], cache)
        rerun = run_cli("extract", source, *TINY, "-j", "0", "--cache", cache)
    assert [(r.name, r.label) for r in rows] == [
        (f"{server.url}/images/cat/cat_000.jpg", "cat"),
        (f"{server.url}/images/cat/cat_001.jpg", "cat"),
        (f"{server.url}/images/dog/dog_000.jpg", "dog"),
    ]
    assert "embedded 0 · from cache 3" in rerun.output and forward_count[0] == 3


class _Forbidding(http.server.BaseHTTPRequestHandler):
    """A server that answers every request with 403, as a bucket without read access does."""

    def do_HEAD(self) -> None:
        self.send_response(403, "Forbidden")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.do_HEAD()

    def log_message(self, *args: object) -> None:
        pass


def test_a_shard_that_answers_access_denied_is_recorded_not_fatal(tmp_path: Path) -> None:
    served = tmp_path / "www"
    labelled_shard(served / "open-0.tar", 0, 3)
    forbidding = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidding)
    thread = threading.Thread(target=forbidding.serve_forever, daemon=True)
    thread.start()
    denied = f"http://127.0.0.1:{forbidding.server_address[1]}/private-0.tar"
    cache = tmp_path / "cache"
    try:
        with http_server(served) as server:
            result = run_cli(
                "extract", f"{server.url}/open-0.tar", denied, *TINY, "-j", "0", "--cache", cache
            )
    finally:
        forbidding.shutdown()
        forbidding.server_close()
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "listed 4 · embedded 3 · from cache 0 · failed 1" in result.output
    with EmbeddingCache(cache).catalog() as catalog:
        ledger = {f.path: f.reason for f in catalog.iter_failures()}
    assert ledger == {denied: "cannot read shard: HTTP 403 Forbidden"}


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_missing_extra_is_one_line_that_names_it(tmp_path: Path) -> None:
    result = run_cli("extract", "gs://bucket/shards/{0..1}.tar", *TINY, "--cache", tmp_path)
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: reading gs:// needs gcsfs: pip install 'headstart[gs]'"
    ]


def test_no_server_at_the_endpoint_is_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    # A closed port: not a shard that answers 404, but nothing there to read anything from.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    cache = tmp_path / "cache"
    result = run_cli("extract", "s3://data/shards/{0..1}.tar", *TINY, "--cache", cache)
    assert result.exit_code not in (0, EXIT_SOME_FAILED)
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: cannot reach 's3://data/shards/0.tar'"), line
    assert not cache.exists() or not list(cache.glob("*/shards/*"))


def test_parts_open_only_their_own_s3_shards(
    tmp_path: Path, s3: S3Server, opened: list[str]
) -> None:
    for number in range(4):
        labelled_shard(tmp_path / "shards" / f"{number}.tar", number * 3, 3)
    s3.upload_tree(BUCKET, "shards", tmp_path / "shards")
    pattern = f"s3://{BUCKET}/shards/{{0..3}}.tar"
    cache = tmp_path / "cache"
    for part in ("1/2", "2/2"):
        result = run_cli("extract", pattern, *TINY, "-j", "0", "--part", part, "--cache", cache)
        assert result.exit_code == 0, result.output
    assert opened == [f"s3://{BUCKET}/shards/{n}.tar" for n in (0, 2, 1, 3)]
    # Each opened with its listed size, so no HEAD asks for it again.
    listed = [(tmp_path / "shards" / f"{n}.tar").stat().st_size for n in (0, 2, 1, 3)]
    assert opened.sizes == listed
    whole = run_cli("extract", pattern, *TINY, "-j", "0", "--cache", cache)
    assert "listed 12 · embedded 0 · from cache 12" in whole.output, whole.output


def test_a_table_on_s3_names_objects_by_url_and_by_path_relative_to_it(
    tmp_path: Path, s3: S3Server, forward_count: list[int]
) -> None:
    """A Parquet table read from a bucket: one column of ``s3://`` URLs, another table of paths
    relative to the table's own prefix; rows keep their labels and a missing object is a
    failure in the ledger, not the end of the run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_folder(tmp_path / "photos", {"owl": 2, "fox": 2})
    urls = s3.upload_tree(BUCKET, "photos", tmp_path / "photos")
    gone = f"s3://{BUCKET}/photos/owl/never_uploaded.jpg"
    tables = tmp_path / "tables"
    tables.mkdir()
    by_url = [{"url": u, "label": u.split("/")[-2]} for u in [*urls, gone]]
    pq.write_table(pa.Table.from_pylist(by_url), tables / "by_url.parquet")
    by_path = [{"path": u.split("/photos/")[1], "label": "any"} for u in urls]
    pq.write_table(pa.Table.from_pylist(by_path), tables / "by_path.parquet")
    s3.upload_tree(BUCKET, "tables", tables)
    cache = tmp_path / "cache"

    source = f"s3://{BUCKET}/tables/by_url.parquet"
    result = run_cli("extract", source, *TINY, "-j", "0", "--cache", cache)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "listed 5 · embedded 4 · from cache 0 · failed 1" in result.output
    with EmbeddingCache(cache).catalog() as catalog:
        ledger = {f.path: f.reason for f in catalog.iter_failures()}
    assert ledger == {gone: "cannot read: not found (404)"}
    rows = labelled_rows([source], cache)
    assert [(r.name, r.label) for r in rows] == [(u, u.split("/")[-2]) for u in urls]
    assert forward_count[0] == 4

    # The objects under the table's prefix, named by relative path: the same bytes, so the
    # same keys, and nothing embedded again.
    s3.upload_tree(BUCKET, "tables", tmp_path / "photos")
    relative = f"s3://{BUCKET}/tables/by_path.parquet"
    again = run_cli("extract", relative, *TINY, "-j", "0", "--cache", cache)
    assert again.exit_code == 0, again.output
    assert "listed 4 · embedded 0 · from cache 4 · failed 0" in again.output
    assert [r.key for r in labelled_rows([relative], cache)] == [r.key for r in rows]
    assert forward_count[0] == 4


def test_a_stream_opened_with_its_listed_size_reads_that_many_bytes(s3: S3Server) -> None:
    """The size a listing gave is what the stream reads to (nothing asks the store again);
    an object that grew since is read as listed, and the reader's signature check after
    the read finds the change."""
    s3.client().put_object(Bucket=BUCKET, Key="grown.tar", Body=b"x" * 5000)
    url = f"s3://{BUCKET}/grown.tar"
    with remote.open_stream(url, 3000) as stream:
        assert stream.read() == b"x" * 3000
    with remote.open_stream(url) as stream:
        assert stream.read() == b"x" * 5000


def test_s3_urls_are_fetched_within_the_download_limits(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``s3://`` row of a table: the byte cap holds, a missing object is final at once,
    and a store that does not answer is tried again, as a web URL would be."""
    import s3fs

    s3.client().put_object(Bucket=BUCKET, Key="a.jpg", Body=b"abc")
    with Downloader(DownloadLimits(retries=2, backoff=0.01)) as downloader:
        assert downloader.fetch(f"s3://{BUCKET}/a.jpg") == b"abc"
        with pytest.raises(DownloadError) as missing:
            downloader.fetch(f"s3://{BUCKET}/gone.jpg")
    assert str(missing.value) == "cannot read: not found (404)"
    capped = Downloader(DownloadLimits(max_bytes=2))
    with capped, pytest.raises(DownloadError, match="too large: more than 2 bytes"):
        capped.fetch(f"s3://{BUCKET}/a.jpg")

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries, left to ours
    s3fs.S3FileSystem.clear_instance_cache()
    retrying = Downloader(DownloadLimits(retries=2, backoff=0.01))
    with retrying, pytest.raises(DownloadError) as unanswered:
        retrying.fetch(f"s3://{BUCKET}/a.jpg")
    assert "Could not connect" in str(unanswered.value)
    assert str(unanswered.value).endswith("after 3 tries")
