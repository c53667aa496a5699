"""``headstart audit``: exact and near duplicates, label conflicts and likely label errors
across image sources, from the embedding cache.

Modules, one job each: :mod:`~headstart.audit.settings` (what is asked, light),
:mod:`~headstart.audit.sources` (the sources, embedded and kept apart),
:mod:`~headstart.audit.duplicates` (same bytes, by content key),
:mod:`~headstart.audit.near` (close embeddings, through FAISS),
:mod:`~headstart.audit.labels` (confident learning on out-of-fold probabilities),
:mod:`~headstart.audit.findings` (the records), :mod:`~headstart.audit.report` (JSON and text)
and :mod:`~headstart.audit.run` (all of it in order).

Names are imported on first use, so the command line's help reads the settings without
importing the cache or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headstart.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_NEAR_THRESHOLD": "settings",
    "AuditOptions": "settings",
    "LabelSearch": "settings",
    "NearSearch": "settings",
    "AuditFindings": "findings",
    "ExactGroup": "findings",
    "Item": "findings",
    "LabelFindings": "findings",
    "LabelIssue": "findings",
    "NearPair": "findings",
    "audit": "run",
    "audit_sources": "run",
}

if TYPE_CHECKING:
    from headstart.audit.findings import (
        AuditFindings,
        ExactGroup,
        Item,
        LabelFindings,
        LabelIssue,
        NearPair,
    )
    from headstart.audit.run import audit, audit_sources
    from headstart.audit.settings import (
        DEFAULT_NEAR_THRESHOLD,
        AuditOptions,
        LabelSearch,
        NearSearch,
    )


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "AuditFindings",
    "AuditOptions",
    "ExactGroup",
    "Item",
    "LabelFindings",
    "LabelIssue",
    "LabelSearch",
    "NearPair",
    "NearSearch",
    "audit",
    "audit_sources",
]
