"""The ``headstart`` command: one click group of thin verbs over the library.

Heavy imports (torch, h5py) happen inside the commands, so ``headstart --help`` is instant.
User errors become one line on stderr and a non-zero exit; exit status 3 means the run finished
but some files could not be used, 130 that it was interrupted (what was done is kept).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from headstart import __version__
from headstart.classify.commands import evaluate, index, knn, predict, train
from headstart.cli_options import (
    CACHE_ENV,
    DEFAULT_CACHE,
    EXIT_INTERRUPTED,
    EXIT_SOME_FAILED,
    embedding_options,
    extract_options,
)
from headstart.errors import HeadstartError
from headstart.finetune.commands import finetune
from headstart.pathnames import printable, readable_output
from headstart.serve.command import serve

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_SOME_FAILED", "main"]

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool killed by SIGPIPE


class _Group(click.Group):
    """Turns the library's user errors into click's one-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HeadstartError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush
            # of stdout from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            click.echo(
                "interrupted; everything finished so far is saved, rerun to continue", err=True
            )
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headstart")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def main(verbose: bool) -> None:
    """Transfer learning from the command line: embed images once, reuse the vectors."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # File names that are not UTF-8 print as their exact bytes into pipes and files, and
    # escaped on a terminal, instead of failing the command.
    readable_output(sys.stdout)
    readable_output(sys.stderr)
    # torch.compile's C++ toolchain probe warns about CUDA on every CPU-only machine.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@main.command()
@click.argument("sources", nargs=-1, required=True)
@embedding_options
@click.option("--retry-failed", is_flag=True, help="Try files the failure ledger lists again.")
@click.option(
    "--part",
    metavar="I/N",
    help="Do part I of N (job arrays); torchrun ranks split the work by themselves.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def extract(
    sources: tuple[str, ...], retry_failed: bool, part: str | None, quiet: bool, **params
) -> None:
    """Embed the images of SOURCES (folders, .txt/.csv manifests, files) into the cache.

    Under torchrun (`torchrun --nproc-per-node N -m headstart extract ...`) every rank embeds
    its own part on its own GPU (or CPU) and rank 0 prints the job's summary.
    """
    from headstart.extract import extract as run_extract
    from headstart.extract.parts import parse_part

    options, cache_dir = extract_options(
        params, retry_failed=retry_failed, part=parse_part(part) if part else None
    )
    # A polite kill (SIGTERM from a scheduler) gets the same clean stop as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run_extract(sources, options, cache_dir, progress=not quiet)
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = summary.failed + summary.skipped_failed
    skipped = summary.skipped.count
    # torchrun takes any non-zero status for a crashed rank (and kills the others), so there
    # the job's failed files are reported but the status stays 0.
    under_torchrun = options.part is None and summary.parts > 1
    status = EXIT_SOME_FAILED if (failed or skipped) and not under_torchrun else 0
    if not summary.leader:  # under torchrun, rank 0 speaks for the job
        return
    fp = summary.fingerprint
    of_parts = f" ({summary.parts} parts)" if under_torchrun else ""
    click.echo(f"fingerprint {fp.id}  {fp.describe()}  (cache {cache_dir}){of_parts}")
    rate = f" · {summary.images_per_second:.1f} img/s" if summary.embedded else ""
    listed = f"listed {summary.listed}"
    if options.part:  # a job-array part speaks for its own share of the listed files
        share = f"{summary.answered} of {summary.listed} listed"
        listed = f"part {options.part.index + 1}/{options.part.count}: {share}"
    unlisted = f" · skipped at listing {skipped}" if skipped else ""
    click.echo(
        f"{listed} · embedded {summary.embedded} · from cache {summary.from_cache}"
        f" · failed {failed}{unlisted}{rate} · {summary.seconds:.1f} s"
    )
    for path, reason in summary.skipped.examples:
        click.echo(f"  skipped at listing: {printable(path)}: {reason}", err=True)
    if failed:
        for failure in summary.failure_examples:
            click.echo(f"  failed: {printable(failure.path)}: {failure.reason}", err=True)
        earlier = (
            f" ({summary.skipped_failed} in earlier runs; --retry-failed tries them again)"
            if summary.skipped_failed
            else ""
        )
        click.echo(
            f"{failed} files could not be used{earlier}; "
            f"list them with: headstart info {cache_dir} --failures",
            err=True,
        )
    if status:
        click.get_current_context().exit(status)


@main.command()
@click.argument("cache_dir", required=False, envvar=CACHE_ENV, default=DEFAULT_CACHE)
@click.option("--failures", "show_failures", is_flag=True, help="List every failed file.")
def info(cache_dir: str, show_failures: bool) -> None:
    """Show the fingerprints, counts, widths and sizes in CACHE_DIR, and its failures."""
    from headstart.cache import EmbeddingCache
    from headstart.cache.report import describe_cache

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
    if report.failure_reasons and not show_failures:
        click.echo("failures by reason:")
        for reason, count in report.failure_reasons:
            click.echo(f"    {count:6d}  {reason}")
    if show_failures:
        with EmbeddingCache(cache_dir).catalog() as catalog:
            for failure in catalog.iter_failures():
                click.echo(f"{failure.path}\t{failure.reason}")


@main.command()
@click.argument("cache_dir", required=False, envvar=CACHE_ENV, default=DEFAULT_CACHE)
@click.option("--fingerprint", help="Fingerprint id or unique prefix [default: the only one].")
@click.option("-o", "--out", required=True, help="Output path (.npy + .csv, or .parquet).")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet"]), help="[default: by suffix]")
def export(cache_dir: str, fingerprint: str | None, out: str, fmt: str | None) -> None:
    """Write a fingerprint's embeddings with paths and labels to .npy + .csv or Parquet."""
    from headstart.cache import EmbeddingCache
    from headstart.cache.export import export_embeddings

    fmt = fmt or ("parquet" if out.endswith(".parquet") else "npy")
    result = export_embeddings(EmbeddingCache(cache_dir).open(fingerprint), out, fmt)
    click.echo(f"wrote {result.rows} rows x {result.dim} to {', '.join(map(str, result.files))}")


@main.group()
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
        f"{report.fingerprints} fingerprints, {report.shards} shards, {report.rows} rows checked; "
        f"{len(report.problems)} problems"
    )
    if report.problems:
        click.get_current_context().exit(1)


@main.command()
@click.argument("pattern", required=False)
@click.option("--source", type=click.Choice(["torchvision", "timm"]), help="Only this family.")
def models(pattern: str | None, source: str | None) -> None:
    """List model names (optionally matching a glob PATTERN such as 'resnet*')."""
    import fnmatch

    from headstart.extract import list_backbones

    for name in list_backbones(source):
        short = name.split(":", 1)[1] if name.startswith("torchvision:") else name
        if pattern is None or fnmatch.fnmatch(short, pattern) or fnmatch.fnmatch(name, pattern):
            click.echo(short)


@main.command()
@click.argument("model")
@click.option("--classifier", help="Your own network's classifier module (none: keep output).")
@click.option(
    "--crop",
    type=click.IntRange(min=1),
    help="Input size of the trial pass that finds your own network's classifier.",
)
def layers(model: str, classifier: str | None, crop: int | None) -> None:
    """List the graph nodes of MODEL that --layer accepts, then (on stderr) which module is
    cut off as its classifier to reach the default embedding."""
    from headstart.extract import get_backbone
    from headstart.extract.features import classifier_summary, layer_names

    backbone = get_backbone(model, "none")
    for name in layer_names(backbone):
        click.echo(name)
    click.echo(classifier_summary(backbone, classifier, crop), err=True)


def _size(num_bytes: float) -> str:
    units = ["B", "KB", "MB", "GB", "TB"]
    while num_bytes >= 1024 and len(units) > 1:
        num_bytes /= 1024
        units.pop(0)
    return f"{num_bytes:.1f} {units[0]}"


# The heads, neighbours, fine-tuning and service verbs live beside their libraries.
for _command in (train, evaluate, predict, index, knn, finetune, serve):
    main.add_command(_command)
