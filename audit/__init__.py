"""``headstart audit``: exact and near duplicates, label conflicts and likely label errors
across image sources, from the embedding cache.

Modules, one job each: :mod:`~headstart.audit.sources` (the sources, embedded and kept apart),
:mod:`~headstart.audit.duplicates` (same bytes, by content key),
:mod:`~headstart.audit.near` (close embeddings, through FAISS),
:mod:`~headstart.audit.labels` (confident learning on out-of-fold probabilities),
:mod:`~headstart.audit.findings` (the records), :mod:`~headstart.audit.report` (JSON and text)
and :mod:`~headstart.audit.run` (all of it in order).
"""

from headstart.audit.findings import (
    AuditFindings,
    ExactGroup,
    Item,
    LabelFindings,
    LabelIssue,
    NearPair,
)
from headstart.audit.labels import LabelSearch
from headstart.audit.near import NearSearch
from headstart.audit.run import DEFAULT_NEAR_THRESHOLD, AuditOptions, audit, audit_sources

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
