"""Commands that read or maintain a cache directory: info, export, cache compact/verify."""

from __future__ import annotations

import click

from headstart.commands.options import CACHE_ENV, DEFAULT_CACHE

__all__ = ["cache", "export", "info"]


@click.command()
@click.argument("cache_dir", required=False, envvar=CACHE_ENV, default=DEFAULT_CACHE)
@click.option(
    "--failures", "show_failures", is_flag=True, help="List every failed file (of every writer)."
)
def info(cache_dir: str, show_failures: bool) -> None:
    """Show the fingerprints, counts, widths and sizes in CACHE_DIR, whether each can embed
    text, the writers that wrote it, and its failures."""
    from headstart.cache import EmbeddingCache
    from headstart.cache.report import describe_cache
    from headstart.extract.text import why_no_text

    report = describe_cache(cache_dir)
    click.echo(
        f"cache {report.root}: {report.files_indexed} files indexed, {report.failures} failed"
    )
    for fp in report.fingerprints:
        dtypes = "/".join(fp.dtypes) or "-"
        click.echo(f"{fp.fingerprint.id}  {fp.fingerprint.describe()}")
        damaged = f" + {fp.unreadable_shards} unreadable" if fp.unreadable_shards else ""
        click.echo(
            f"    {fp.embeddings} embeddings x {fp.dim or '-'}  {dtypes}  {fp.shards} shards"
            f"{damaged}  {_size(fp.bytes)}"
        )
        no_text = why_no_text(fp.fingerprint)
        if no_text is None:
            click.echo(f"    text: yes, {fp.texts} text embeddings cached")
        else:
            click.echo(f"    text: no; {no_text}")
    _echo_writers(report.writers)
    if report.failure_reasons and not show_failures:
        click.echo("failures by reason:")
        for reason, count in report.failure_reasons:
            click.echo(f"    {count:6d}  {reason}")
    if show_failures:
        with EmbeddingCache(cache_dir).catalog() as catalog:
            for failure in catalog.iter_failures():
                click.echo(f"{failure.path}\t{failure.reason}")


@click.command()
@click.argument("cache_dir", required=False, envvar=CACHE_ENV, default=DEFAULT_CACHE)
@click.option("--fingerprint", help="Fingerprint id or unique prefix [default: the only one].")
@click.option(
    "-o",
    "--out",
    required=True,
    help="Output path (.npy + .csv, or .parquet); for clip-retrieval a folder or a URL "
    "(s3://bucket/prefix).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npy", "parquet", "clip-retrieval"]),
    help="clip-retrieval: img_emb/*.npy, metadata/*.parquet and (image-text models) "
    "text_emb/*.npy, as autofaiss and embedding-reader read them [default: by suffix].",
)
@click.option(
    "--rows-per-part",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="clip-retrieval: rows in each part file.",
)
@click.option(
    "--text/--no-text",
    default=None,
    help="clip-retrieval: write the captions' embeddings to text_emb/ [default: when the "
    "model embeds text and rows have captions].",
)
@click.option("--device", default="auto", show_default=True, help="Embeds captions (--text).")
def export(
    cache_dir: str,
    fingerprint: str | None,
    out: str,
    fmt: str | None,
    rows_per_part: int,
    text: bool | None,
    device: str,
) -> None:
    """Write a fingerprint's embeddings with paths and labels to .npy + .csv, Parquet, or
    clip-retrieval's layout."""
    from headstart.cache import EmbeddingCache
    from headstart.extract.remote import is_url

    if is_url(out) and fmt != "clip-retrieval":
        raise click.ClickException(
            "npy and parquet exports write local files; --format clip-retrieval writes to URLs"
        )
    store = EmbeddingCache(cache_dir).open(fingerprint)
    if fmt == "clip-retrieval":
        from headstart.cache.clip_retrieval import export_clip_retrieval

        done = export_clip_retrieval(
            store, out, rows_per_part=rows_per_part, text=text, device=device
        )
        texts = f", {done.captions} captions embedded in text_emb/" if done.text else ""
        click.echo(
            f"wrote {done.rows} rows x {done.dim} in {len(done.files)} files to {out}{texts}"
        )
        return
    from headstart.cache.export import export_embeddings

    fmt = fmt or ("parquet" if out.endswith(".parquet") else "npy")
    result = export_embeddings(store, out, fmt)
    click.echo(f"wrote {result.rows} rows x {result.dim} to {', '.join(map(str, result.files))}")


@click.group()
def cache() -> None:
    """Maintain a cache directory: compact its shards, verify it reads."""


@cache.command("compact")
@click.argument("cache_dir", required=False, envvar=CACHE_ENV, default=DEFAULT_CACHE)
@click.option("--fingerprint", help="Only this fingerprint (id or prefix) [default: all].")
@click.option(
    "--shard-size",
    "shard_rows",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    help="Rows per merged shard.",
)
def cache_compact(cache_dir: str, fingerprint: str | None, shard_rows: int) -> None:
    """Merge many small shards into large ones and drop duplicate rows (atomically)."""
    from headstart.cache import EmbeddingCache
    from headstart.cache.maintenance import compact

    store_cache = EmbeddingCache(cache_dir)
    targets = [store_cache.find(fingerprint)] if fingerprint else store_cache.fingerprints()
    for target in targets:
        result = compact(store_cache, target, shard_rows=shard_rows)
        click.echo(
            f"{result.fingerprint}: {result.shards_before} shards -> {result.shards_after}, "
            f"{result.rows} rows, {result.duplicates_dropped} duplicates dropped"
        )


@cache.command("verify")
@click.argument("cache_dir", required=False, envvar=CACHE_ENV, default=DEFAULT_CACHE)
def cache_verify(cache_dir: str) -> None:
    """Check every shard opens and counts match; report missing or corrupt files (read-only)."""
    from headstart.cache import EmbeddingCache
    from headstart.cache.maintenance import verify

    report = verify(EmbeddingCache(cache_dir))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(
        f"{report.fingerprints} fingerprints, {report.shards} shards, {report.rows} rows, "
        f"{report.catalogs} catalogs of {report.writers} writers checked; "
        f"{len(report.problems)} problems"
    )
    if report.problems:
        click.get_current_context().exit(1)


def _echo_writers(writers: list) -> None:
    """One line a writer: who, when, and what its own catalog holds (before merging)."""
    if not writers:
        return
    click.echo(f"writers: {len(writers)}")
    for writer in writers:
        if writer.started_unix is None:
            when = "from before writers had catalogs of their own"
        else:
            when = f"pid {writer.pid} on {writer.host}, started {_clock(writer.started_unix)}, "
            when += (
                f"finished {_clock(writer.finished_unix)}"
                if writer.finished_unix is not None
                else "not finished (running, or stopped early)"
            )
        click.echo(
            f"    {writer.id}  {writer.files} files, {writer.samples} tar samples, "
            f"{writer.failures} failed  ({when})"
        )


def _clock(unix: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _size(num_bytes: float) -> str:
    units = ["B", "KB", "MB", "GB", "TB"]
    while num_bytes >= 1024 and len(units) > 1:
        num_bytes /= 1024
        units.pop(0)
    return f"{num_bytes:.1f} {units[0]}"
