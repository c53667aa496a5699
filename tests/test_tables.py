"""Tables of image paths as sources: Parquet, CSV and JSONL, labelled and captioned, split by
row group or row block, checked for their columns before any work."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import SMALL_FP32, TINY_MODELS, write_image

from headstart.cache import EmbeddingCache
from headstart.cli import main
from headstart.extract import tables
from headstart.extract.labelled import iter_labelled
from headstart.extract.parts import Partition
from headstart.extract.tables import TableColumns, is_table_source, open_table

TINY = ["--model", f"{TINY_MODELS}:tiny_features", *SMALL_FP32, "-q"]


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rows_of(count: int, folder: Path, start: int = 0) -> list[dict]:
    """``count`` images under ``folder/img``, as table rows with paths relative to ``folder``."""
    rows = []
    for seed in range(start, start + count):
        write_image(folder / "img" / f"{seed:03d}.jpg", seed)
        label = ["cat", "dog", "owl"][seed % 3]
        rows.append({"path": f"img/{seed:03d}.jpg", "label": label, "caption": f"photo {seed}"})
    return rows


def write_table(path: Path, rows: list[dict], row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def labelled_rows(sources: list[Path], cache: Path, **kwargs) -> list:
    with EmbeddingCache(cache).catalog() as catalog:
        blocks = iter_labelled([str(s) for s in sources], catalog, **kwargs)
        return [row for block in blocks for row in block]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_table_embeds_its_rows_with_labels_and_captions(
    tmp_path: Path, suffix: str, forward_count: list[int]
) -> None:
    data = tmp_path / "data"
    rows = rows_of(6, data)
    rows[5]["path"] = rows[1]["path"]  # the same image on two rows: embedded once
    table = write_table(data / f"table{suffix}", rows)
    cache = tmp_path / "cache"

    result = run("extract", table, *TINY, "-j", "0", "--cache", cache)
    assert result.exit_code == 0, result.output
    assert "listed 6 · embedded 5 · from cache 1 · failed 0" in result.output
    assert forward_count[0] == 5

    listed = labelled_rows([table], cache)
    # Relative paths are relative to the table's folder; rows keep their label and caption.
    assert [r.name for r in listed] == [str(data / row["path"]) for row in rows]
    assert [(r.label, r.caption) for r in listed] == [(r["label"], r["caption"]) for r in rows]
    assert listed[5].key == listed[1].key
    # The same file listed from its folder is the same cache entry, known by its path.
    store = EmbeddingCache(cache).open()
    assert store.resolve_keys([str(data / "img" / "002.jpg")])[0] == listed[2].key

    # The catalog keeps each row as a sample of the table, caption and all (what export reads).
    with EmbeddingCache(cache).catalog() as catalog:
        recorded = catalog.lookup_samples(str(table), ["0", "3"])
    assert recorded["3"].caption == "photo 3" and recorded["3"].name == listed[3].name

    rerun = run("extract", table, *TINY, "--cache", cache)
    assert "listed 6 · embedded 0 · from cache 6 · failed 0" in rerun.output, rerun.output
    assert forward_count[0] == 5


def test_heads_train_and_evaluate_on_a_table_with_its_labels(tmp_path: Path) -> None:
    table = write_table(tmp_path / "data" / "train.parquet", rows_of(12, tmp_path / "data"))
    cache = tmp_path / "cache"
    trained = run("train", table, *TINY, "--cache", cache, "--head", "ncm", "-o", tmp_path / "h")
    assert trained.exit_code == 0, trained.output
    head = json.loads((tmp_path / "h" / "head.json").read_text())
    assert sorted(head["classes"]) == ["cat", "dog", "owl"]
    evaluated = run("evaluate", tmp_path / "h", table, "--cache", cache, "--json", tmp_path / "e")
    assert evaluated.exit_code == 0, evaluated.output
    document = json.loads((tmp_path / "e").read_text())
    assert document["n"] == 12 and document["missing"] == 0
    predicted = run("predict", tmp_path / "h", table, "--cache", cache, "--format", "jsonl", "-q")
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.output.splitlines()]
    assert [line["path"] for line in lines] == [
        str(tmp_path / "data" / "img" / f"{i:03d}.jpg") for i in range(12)
    ]
    built = run("index", "build", table, *TINY, "--cache", cache, "-o", tmp_path / "idx")
    assert built.exit_code == 0 and "indexed 12 vectors" in built.output, built.output


def test_every_verb_reads_a_table_by_the_columns_it_is_given(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = [{"file": r["path"], "species": r["label"]} for r in rows_of(12, data)]
    table = write_table(data / "train.jsonl", rows)
    cache, named = tmp_path / "cache", ("--path-field", "file", "--label-field", "species")
    trained = run("train", table, *TINY, *named, "--cache", cache, "--head", "ncm", "-o",
                  tmp_path / "h")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert sorted(json.loads((tmp_path / "h" / "head.json").read_text())["classes"]) == [
        "cat", "dog", "owl"
    ]  # fmt: skip
    evaluated = run("evaluate", tmp_path / "h", table, *named, "--cache", cache, "--json",
                    tmp_path / "e")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "e").read_text())["n"] == 12
    # Without the names, the table has no image column: one line, before any work.
    unnamed = run("evaluate", tmp_path / "h", table, "--cache", cache)
    assert unnamed.exit_code == 1 and "no 'path' or 'url' column" in unnamed.output
    built = run("index", "build", table, *TINY, *named, "--cache", cache, "-o", tmp_path / "i")
    assert built.exit_code == 0 and "indexed 12 vectors" in built.output, built.output


def test_column_names_are_options_and_a_missing_column_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = [
        {"file": r["path"], "klass": r["label"], "text": r["caption"], "key": f"k{i}"}
        for i, r in enumerate(rows_of(3, data))
    ]
    table = write_table(data / "t.jsonl", rows)
    cache = tmp_path / "cache"

    missing = run("extract", table, *TINY, "--cache", cache)
    assert missing.exit_code == 1
    (line,) = missing.output.strip().splitlines()
    assert "no 'path' or 'url' column" in line and "file, klass, text, key" in line
    assert not (cache / "catalog.sqlite").exists() or not EmbeddingCache(cache).fingerprints()

    named = ("--path-field", "file", "--label-field", "klass", "--caption-field", "text")
    wrong = run("extract", table, *TINY, *named[:2], "--label-field", "class", "--cache", cache)
    assert wrong.exit_code == 1 and "has no 'class' column" in wrong.output

    result = run("extract", table, *TINY, *named, "--id-field", "key", "-j", "0", "--cache", cache)
    assert result.exit_code == 0, result.output
    from headstart.extract.samples import SampleFields

    fields = SampleFields("klass", "text", "file")
    listed = labelled_rows([table], cache, fields=fields)
    assert [(r.label, r.caption) for r in listed] == [
        ("cat", "photo 0"),
        ("dog", "photo 1"),
        ("owl", "photo 2"),
    ]
    with EmbeddingCache(cache).catalog() as catalog:
        assert set(catalog.lookup_samples(str(table), ["k0", "k1", "k2"])) == {"k0", "k1", "k2"}


def test_a_damaged_table_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    table = write_table(data / "t.parquet", rows_of(3, data))
    table.write_bytes(table.read_bytes()[:-40])  # the footer cut off
    result = run("extract", table, *TINY, "--cache", tmp_path / "cache")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: cannot read table {table}")
    lines = data / "t.jsonl"
    lines.write_text('{"path": "img/000.jpg"}\n{"path": \n')
    result = run("extract", lines, *TINY, "--cache", tmp_path / "cache")
    assert result.exit_code == 1 and f"{lines}:2: not a JSON record" in result.output


def test_a_csv_is_a_table_only_when_its_header_names_the_image_column(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows_of(2, data)
    (data / "manifest.csv").write_text("img/000.jpg,cat\nimg/001.jpg,dog\n")
    (data / "table.csv").write_text("label,path\ncat,img/000.jpg\ndog,img/001.jpg\n")
    assert not is_table_source(str(data / "manifest.csv"))
    assert is_table_source(str(data / "table.csv"))
    assert is_table_source(str(data / "manifest.csv"), TableColumns(path="img/000.jpg"))
    cache = tmp_path / "cache"
    both = run("extract", data / "manifest.csv", data / "table.csv", *TINY, "--cache", cache)
    assert "listed 4 · embedded 2 · from cache 2 · failed 0" in both.output, both.output
    labels = [r.label for r in labelled_rows([data / "manifest.csv", data / "table.csv"], cache)]
    assert labels == ["cat", "dog", "cat", "dog"]
    # URLs belong in a table: in a manifest they are one line of error, not a failed path each.
    (data / "urls.txt").write_text("img/000.jpg\nhttps://example.org/a.jpg\n")
    urls = run("extract", data / "urls.txt", *TINY, "--cache", cache)
    assert urls.exit_code == 1 and f"{data / 'urls.txt'}:2: a URL in a manifest" in urls.output


def test_a_row_whose_file_is_missing_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = rows_of(3, data)
    rows.append({"path": "img/gone.jpg", "label": "cat", "caption": None})
    rows.append({"path": None, "label": "cat", "caption": None})
    (data / "img" / "bad.jpg").write_bytes(b"not an image")
    rows.append({"path": "img/bad.jpg", "label": "dog", "caption": None})
    table = write_table(data / "t.parquet", rows)
    cache = tmp_path / "cache"
    result = run("extract", table, *TINY, "-j", "0", "--cache", cache)
    assert result.exit_code == 3, result.output
    assert "embedded 3" in result.output and "failed 3" in result.output
    with EmbeddingCache(cache).catalog() as catalog:
        reasons = {Path(f.path).name: f.reason for f in catalog.iter_failures()}
    assert "cannot read file" in reasons["gone.jpg"]
    assert reasons["t.parquet#4"] == "no path or URL in this row"
    assert "bad.jpg" in reasons
    again = run("extract", table, *TINY, "--cache", cache)
    assert "embedded 0 · from cache 3 · failed 3" in again.output, again.output


def test_parts_divide_a_parquet_table_by_row_group(
    tmp_path: Path, forward_count, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_groups: list[list[int]] = []
    iter_batches = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        read_groups.append(list(kwargs["row_groups"]))
        return iter_batches(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    data = tmp_path / "data"
    table = write_table(data / "t.parquet", rows_of(10, data), row_group_size=3)  # 3+3+3+1
    assert pq.ParquetFile(table).metadata.num_row_groups == 4
    cache = tmp_path / "cache"
    first = run("extract", table, *TINY, "--part", "1/2", "-j", "0", "--cache", cache)
    assert "part 1/2: 6 of 6 listed · embedded 6" in first.output, first.output
    second = run("extract", table, *TINY, "--part", "2/2", "-j", "0", "--cache", cache)
    assert "part 2/2: 4 of 4 listed · embedded 4" in second.output, second.output
    assert forward_count[0] == 10
    whole = run("extract", table, *TINY, "--cache", cache)
    assert "listed 10 · embedded 0 · from cache 10" in whole.output, whole.output
    got = [
        int(r.sample)
        for r in open_table(str(table), TableColumns()).iter_blocks(Partition(1, 2))
        for r in r
    ]
    assert got == [3, 4, 5, 9]
    # Each part read its own row groups and no other: 1/2 groups 0 and 2, 2/2 groups 1 and 3;
    # then the whole table, then part 2/2 read directly.
    assert read_groups == [[0], [2], [1], [3], [0], [1], [2], [3], [1], [3]]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_parts_divide_a_text_table_or_one_row_group_by_row_block(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tables, "ROW_BLOCK", 3)
    data = tmp_path / "data"
    table = write_table(data / f"t{suffix}", rows_of(10, data))  # Parquet: one row group
    opened = open_table(str(table), TableColumns())
    mine = [int(r.sample) for block in opened.iter_blocks(Partition(0, 2)) for r in block]
    assert mine == [0, 1, 2, 6, 7, 8]
    other = [int(r.sample) for block in opened.iter_blocks(Partition(1, 2)) for r in block]
    assert other == [3, 4, 5, 9]
    if suffix != ".parquet":
        assert [len(b) for b in opened.iter_blocks()] == [3, 3, 3, 1]
    cache = tmp_path / "cache"
    second = run("extract", table, *TINY, "--part", "2/2", "-j", "0", "--cache", cache)
    assert "part 2/2: 4 of 4 listed · embedded 4" in second.output, second.output


def test_torchrun_ranks_divide_a_table_and_rank_0_reports_the_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    table = write_table(data / "t.parquet", rows_of(11, data), row_group_size=3)  # 3+3+3+2
    common = [*SMALL_FP32, "--store-dtype", "float32", "--workers", "0", "-q"]
    model = ["--model", f"{TINY_MODELS}:tiny_features", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, "--nproc-per-node", "2", "-m", "headstart", "extract", str(table)]
    cache = tmp_path / "cache"
    ranks = subprocess.run(
        [*command, *model, "--cache", str(cache)], capture_output=True, text=True, timeout=300
    )
    assert ranks.returncode == 0, ranks.stderr
    assert ranks.stdout.count("listed 11 · embedded 11 ·") == 1, ranks.stdout  # rank 0 only
    assert len(EmbeddingCache(cache).open()) == 11
    with EmbeddingCache(cache).catalog() as catalog:
        assert catalog.count_samples() == 11


def test_a_big_row_group_streams_in_batches(tmp_path: Path) -> None:
    rows = [{"url": f"https://example.org/{i}.jpg", "id": i} for i in range(10_000)]
    table = write_table(tmp_path / "t.parquet", rows)  # one row group of 10,000 rows
    sizes = [len(block) for block in open_table(str(table), TableColumns()).iter_blocks()]
    assert sizes == [4096, 4096, 1808]
