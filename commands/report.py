"""``headstart report``: parses options, calls :func:`headstart.report.build_report`, prints.

Also :func:`report_hint`, the last line ``train --plot`` and ``finetune`` print.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import click

from headstart.commands.options import (
    DEFAULT_CACHE,
    EXIT_SOME_FAILED,
    runtime,
    runtime_options,
)
from headstart.pathnames import printable
from headstart.report.settings import DEFAULT_AUDIT_LIMIT, DEFAULT_MAP, MAPS

__all__ = ["report", "report_hint"]

REPORT_FILE = "report.html"
# Stands in for labelled images the head has not been fitted or chosen on.
HELD_OUT = "TEST_SOURCE"


@click.command()
@click.argument("head_dir", required=False)
@click.argument("sources", nargs=-1)
@click.option(
    "--audit",
    "audit_json",
    type=click.Path(dir_okay=False),
    help="Instead of HEAD_DIR: the page of an audit's findings (headstart audit --json FILE), "
    "each with its images side by side.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_AUDIT_LIMIT,
    show_default=True,
    help="With --audit: findings shown of each kind (the JSON has them all).",
)
@click.option(
    "-o",
    "--out",
    default=REPORT_FILE,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The HTML file to write.",
)
@click.option(
    "--map",
    "projection",
    type=click.Choice(list(MAPS)),
    default=DEFAULT_MAP,
    show_default=True,
    help="Embedding map projection: auto is UMAP when installed, else t-SNE (about 20 s for "
    "the 2,000 points drawn); pca is instant.",
)
@runtime_options
def report(
    head_dir,
    sources,
    audit_json,
    limit,
    out,
    projection,
    cache_dir,
    device,
    batch_size,
    workers,
    quiet,
    fields,
) -> None:
    """One self-contained HTML page (works offline) about the head in HEAD_DIR, or about a
    fine-tuning run directory: its leaderboard or learning curves and, evaluated on labelled
    SOURCES, accuracy, macro-F1, the confusion matrix, a per-class table, the most confident
    mistakes and an embedding map; a warning at the top when SOURCES hold images the head was
    trained on. With --audit FILE instead: the findings of headstart audit, with thumbnails."""
    if audit_json is not None:
        if head_dir is not None:
            raise click.UsageError("give HEAD_DIR [SOURCES] or --audit FILE, not both")
        _audit_page(audit_json, out, limit)
        return
    if head_dir is None:
        raise click.UsageError("give HEAD_DIR (a head or a fine-tuning run), or --audit FILE")
    from headstart.report import build_report

    written = build_report(
        head_dir,
        sources,
        out,
        cache_dir,
        runtime=runtime(device, batch_size, workers, fields),
        projection=projection,
        progress=not quiet,
    )
    evaluated = f", {written.evaluated} images evaluated" if written.evaluated else ""
    click.echo(
        f"wrote {printable(str(written.path))} ({written.size / 1024:.0f} KB{evaluated}); "
        "open it in a browser"
    )
    if written.missing:
        click.echo(f"{written.missing} images had no embedding and were left out", err=True)
        click.get_current_context().exit(EXIT_SOME_FAILED)


def _audit_page(audit_json: str, out: str, limit: int) -> None:
    from headstart.report import build_audit_page

    written = build_audit_page(audit_json, out, limit=limit)
    click.echo(
        f"wrote {printable(str(written.path))} ({written.size / 1024:.0f} KB, "
        f"{written.findings} findings shown); open it in a browser"
    )


def report_hint(directory: str, sources: Sequence[str], cache_dir: str) -> str:
    """The command that reports on ``directory``: evaluated on ``sources`` when they are
    held out, else on a placeholder the user fills in."""
    words = ["headstart", "report", directory, *(sources or [HELD_OUT])]
    if cache_dir != DEFAULT_CACHE:
        words += ["--cache", cache_dir]
    words += ["-o", f"{directory.rstrip('/')}/{REPORT_FILE}"]
    # The placeholder stays bare: quoted, it would read as a literal name.
    shown = " ".join(w if w == HELD_OUT else shlex.quote(printable(w)) for w in words)
    return f"see it: {shown}"
