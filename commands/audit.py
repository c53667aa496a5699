"""``headstart audit``: duplicates, leaks across sources, label conflicts and likely label
errors, from the cached embeddings."""

from __future__ import annotations

import click

from headstart.audit.settings import LabelSearch, NearSearch
from headstart.commands.options import default_of, embedding_options, extract_options
from headstart.errors import HeadstartError

__all__ = ["audit"]


@click.command()
@click.argument("sources", nargs=-1, required=True)
@embedding_options
@click.option(
    "--near-threshold",
    type=click.FloatRange(-1, 1),
    default=default_of(NearSearch, "threshold"),
    show_default=True,
    help="Cosine similarity over which two different files are near-copies.",
)
@click.option(
    "--near-within",
    is_flag=True,
    help="Also look for near-duplicates within each source (every source is then indexed).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=default_of(LabelSearch, "folds"),
    show_default=True,
    help="Cross-validation folds for the label-error search; classes with fewer images are "
    "left out of it.",
)
@click.option(
    "--label-errors/--no-label-errors",
    default=True,
    show_default=True,
    help="Search for likely label errors (confident learning on out-of-fold probabilities).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Findings printed of each kind (--json has them all).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    help="Write every finding to this JSON file.",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    help="Also write a page of the findings with their thumbnails side by side (as headstart "
    "report --audit makes from the JSON).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def audit(
    sources: tuple[str, ...],
    near_threshold: float,
    near_within: bool,
    folds: int,
    label_errors: bool,
    limit: int,
    json_out: str | None,
    html_out: str | None,
    quiet: bool,
    **params,
) -> None:
    """Find exact and near duplicates within and across SOURCES (e.g. data/train data/test),
    the same image under different labels, and likely label errors; embeds what the cache
    lacks first.
    """
    from headstart.audit.report import summary_lines, write_json
    from headstart.audit.run import audit as run_audit
    from headstart.audit.settings import AuditOptions

    embed, cache_dir = extract_options(params)
    if html_out:
        from pathlib import Path

        from headstart.report import check_writable

        check_writable(Path(html_out))  # before an audit that may take minutes
    options = AuditOptions(
        near=NearSearch(near_threshold, within=near_within),
        labels=LabelSearch(folds=folds),
        find_label_errors=label_errors,
    )
    findings = run_audit(sources, embed, cache_dir, options, progress=not quiet)
    for line in summary_lines(findings, limit):
        click.echo(line)
    if json_out:
        try:
            write_json(json_out, findings)
        except OSError as exc:
            raise HeadstartError(f"cannot write {json_out}: {exc.strerror or exc}") from None
        click.echo(f"wrote {json_out}")
    if html_out:
        from headstart.audit.report import findings_to_dict
        from headstart.report import build_audit_page

        written = build_audit_page(findings_to_dict(findings), html_out)
        click.echo(f"wrote {written.path} ({written.size / 1024:.0f} KB)")
