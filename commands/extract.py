"""``headstart extract``: embed images into the cache and say what happened."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import click

from headstart.commands.options import EXIT_SOME_FAILED, embedding_options, extract_options
from headstart.pathnames import printable

if TYPE_CHECKING:
    from headstart.extract import ExtractOptions, ExtractSummary

__all__ = ["extract"]


@click.command()
@click.argument("sources", nargs=-1, required=True)
@embedding_options
@click.option("--retry-failed", is_flag=True, help="Try files the failure ledger lists again.")
@click.option(
    "--part",
    metavar="I/N",
    help="Do part I of N (job arrays); torchrun ranks split the work by themselves.",
)
@click.option(
    "--url-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Downloads: connect and read timeout (the longest wait for the next bytes).",
)
@click.option(
    "--url-deadline",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Downloads: the most one image may take, retries included (a server that trickles "
    "bytes never meets the read timeout).",
)
@click.option(
    "--url-retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Downloads: tries again after a connection error, 429 or 5xx, with backoff.",
)
@click.option(
    "--url-per-host",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Downloads: at most this many requests to one host at a time.",
)
@click.option(
    "--url-max-bytes",
    default="20M",
    show_default=True,
    metavar="SIZE",
    help="Downloads: a larger image is cut off and recorded as failed.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def extract(
    sources: tuple[str, ...],
    retry_failed: bool,
    part: str | None,
    url_timeout: float,
    url_deadline: float,
    url_retries: int,
    url_per_host: int,
    url_max_bytes: str,
    quiet: bool,
    **params,
) -> None:
    """Embed the images of SOURCES (folders, .txt/.csv manifests, files, webdataset tar
    shards: x.tar, 'shards/{00000..00099}.tar', 'shards/*.tar'; tables of paths or URLs:
    .parquet, .jsonl, .csv with a header row) into the cache. Folders and shards may be s3://,
    gs:// or http(s):// URLs (pip install 'headstart[s3]', [gs], [http]).

    Under torchrun (`torchrun --nproc-per-node N -m headstart extract ...`) every rank embeds
    its own part on its own GPU (or CPU) and rank 0 prints the job's summary.
    """
    from headstart.extract import extract as run_extract
    from headstart.extract.download import DownloadLimits
    from headstart.extract.parts import parse_part
    from headstart.sizes import parse_size

    downloads = DownloadLimits(
        connect_timeout=url_timeout,
        read_timeout=url_timeout,
        deadline=url_deadline,
        retries=url_retries,
        per_host=url_per_host,
        max_bytes=max(1, parse_size(url_max_bytes)),
    )
    options, cache_dir = extract_options(
        params, retry_failed=retry_failed, part=parse_part(part) if part else None
    )
    # A polite kill (SIGTERM from a scheduler) gets the same clean stop as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run_extract(
            sources,
            options,
            cache_dir,
            progress=not quiet,
            downloads=downloads,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = summary.failed + summary.skipped_failed
    skipped = summary.skipped.count
    # torchrun takes any non-zero status for a crashed rank (and kills the others), so there
    # the job's failed files are reported but the status stays 0.
    under_torchrun = options.part is None and summary.parts > 1
    status = EXIT_SOME_FAILED if (failed or skipped) and not under_torchrun else 0
    if summary.leader:  # under torchrun, rank 0 speaks for the job
        _print_summary(summary, options, cache_dir, under_torchrun)
    if status:
        click.get_current_context().exit(status)


def _print_summary(
    summary: ExtractSummary, options: ExtractOptions, cache_dir: str, under_torchrun: bool
) -> None:
    """The run's two lines on stdout; files that could not be used, on stderr."""
    failed = summary.failed + summary.skipped_failed
    skipped = summary.skipped.count
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
