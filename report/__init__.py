"""``headstart report``: one self-contained HTML page about a head or a fine-tuning run.

Data flows one way: :mod:`~headstart.report.gather` reads the head or run directory and
evaluates the head on labelled sources (through the cache, as ``evaluate`` does), reducing
everything per image to bounded sizes; :mod:`~headstart.report.figures` draws the plots and
thumbnails; :mod:`~headstart.report.html` renders the page. :func:`build_report` connects them
and publishes the file atomically. :func:`build_audit_page` does the same for an audit's
findings (:mod:`~headstart.report.audit_page`).

Example:
    >>> from headstart.report import build_report
    >>> build_report("heads/best", ["data/test"], "report.html", ".headstart")  # doctest: +SKIP
    Report(path=PosixPath('report.html'), size=188925, ...)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from headstart.atomic import write_text_atomic
from headstart.errors import HeadstartError
from headstart.pathnames import printable
from headstart.report.settings import DEFAULT_MAP

__all__ = ["AuditPage", "Report", "build_audit_page", "build_report", "check_writable"]


@dataclass(frozen=True)
class Report:
    """What was written, for the command line to summarise."""

    path: Path
    size: int  # bytes
    kind: str  # "head" or "finetune"
    evaluated: int  # images evaluated (0 without sources)
    missing: int  # images of the sources with no embedding, left out


def build_report(
    target: str | os.PathLike[str],
    sources: Sequence[str],
    out: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    runtime: dict | None = None,
    projection: str = DEFAULT_MAP,
    progress: bool = False,
) -> Report:
    """Write the report on ``target`` (a head directory or a fine-tuning run directory),
    evaluated on labelled ``sources`` when given, to ``out``; ``projection`` (a key of
    :data:`~headstart.report.settings.MAPS`) says how the embedding map is drawn."""
    from headstart.report.figures import draw
    from headstart.report.gather import find_target, gather
    from headstart.report.html import render

    out = Path(out)
    check_writable(out)  # before an evaluation that may take minutes
    found = find_target(target)
    data = gather(found, sources, cache_dir, runtime=runtime, progress=progress)
    page = render(data, draw(data, projection=projection))
    try:
        write_text_atomic(out, page)
    except OSError as exc:
        raise HeadstartError(f"cannot write {printable(str(out))}: {exc.strerror or exc}") from None
    evaluated = data.evaluated
    return Report(
        out,
        len(page.encode("utf-8")),
        found.kind,
        evaluated.metrics.n if evaluated else 0,
        evaluated.missing if evaluated else 0,
    )


@dataclass(frozen=True)
class AuditPage:
    """The audit page written, for the command line to summarise."""

    path: Path
    size: int  # bytes
    findings: int  # findings shown, over every section


def build_audit_page(
    findings: str | os.PathLike[str] | dict,
    out: str | os.PathLike[str],
    *,
    limit: int | None = None,
) -> AuditPage:
    """Write the page of an audit's findings (the path of its ``--json`` file, or that
    document itself) to ``out``, ``limit`` findings a section."""
    from headstart.report.audit_page import DEFAULT_AUDIT_LIMIT, read_audit, render_audit

    out = Path(out)
    check_writable(out)
    document = findings if isinstance(findings, dict) else read_audit(findings)
    limit = DEFAULT_AUDIT_LIMIT if limit is None else limit
    page = render_audit(document, limit=limit)
    try:
        write_text_atomic(out, page)
    except OSError as exc:
        raise HeadstartError(f"cannot write {printable(str(out))}: {exc.strerror or exc}") from None
    lists = [
        document["exact_duplicates"],
        document["label_conflicts"],
        document["near_duplicates"]["pairs"],
        document["label_errors"]["issues"],
    ]
    shown = sum(min(len(found), limit) for found in lists)
    return AuditPage(out, len(page.encode("utf-8")), shown)


def check_writable(out: Path) -> None:
    """Refuse an output path that cannot be written, in one line that says why."""
    shown = printable(str(out))
    if out.is_dir():
        raise HeadstartError(f"{shown} is a directory; give -o a file name such as report.html")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise HeadstartError(f"cannot write {shown}: no directory {printable(str(parent))}")
    # The file is written beside its place, then renamed: the directory must take new files.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HeadstartError(f"cannot write {shown}: {printable(str(parent))} is not writable")
