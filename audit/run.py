"""One audit: embed what is missing, then look for exact and near duplicates, label conflicts
and likely label errors across the sources, in that order (cheapest first)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from headstart.audit.duplicates import exact_duplicates, label_conflicts
from headstart.audit.findings import AuditFindings, LabelFindings
from headstart.audit.labels import find_label_errors
from headstart.audit.near import near_duplicates
from headstart.audit.settings import AuditOptions
from headstart.audit.sources import AuditSource, embed_audit_sources
from headstart.extract import ExtractOptions

__all__ = ["audit", "audit_sources"]

log = logging.getLogger(__name__)


def audit(
    sources: Sequence[str],
    extract_options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    options: AuditOptions | None = None,
    *,
    progress: bool = False,
) -> AuditFindings:
    """Audit ``sources`` (named as given), embedding what the cache lacks first.

    Example:
        >>> findings = audit(["data/train", "data/test"], ExtractOptions(model="resnet50"),
        ...                  ".headstart")  # doctest: +SKIP
        >>> findings.exact[0].sources
        ('data/train', 'data/test')
    """
    embedded = embed_audit_sources(sources, extract_options, cache_dir, progress=progress)
    return audit_sources(embedded, options or AuditOptions())


def audit_sources(sources: Sequence[AuditSource], options: AuditOptions) -> AuditFindings:
    """The findings over already embedded sources."""
    exact = exact_duplicates(sources)
    log.info("%d exact-duplicate groups", len(exact))
    searchable = len(sources) > 1 or options.near.within
    near = near_duplicates(sources, options.near) if searchable else None
    if options.find_label_errors:
        labels = find_label_errors(sources, options.labels)
    else:
        labels = LabelFindings(needs="the label-error search, which was turned off")
    return AuditFindings(
        sources={s.name: len(s) for s in sources},
        exact=exact,
        conflicts=label_conflicts(exact),
        near=near,
        near_threshold=options.near.threshold,
        near_within=options.near.within,
        labels=labels,
        labelled_sources={s.name: s.labelled for s in sources},
        missing=sum(s.data.missing for s in sources),
    )
