"""What an audit finds, as small typed records, each carrying its evidence (who, how sure, why).

Every record names images as :class:`Item` (the source as the user gave it, the path, the label),
so a person can open the files and check the finding by eye.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AuditFindings",
    "ExactGroup",
    "Item",
    "LabelFindings",
    "LabelIssue",
    "NearPair",
]


@dataclass(frozen=True)
class Item:
    """One image: the source it was listed under (as given), its path and its label (None when
    the source has none)."""

    source: str
    path: str
    label: str | None


@dataclass(frozen=True)
class ExactGroup:
    """Files with the same bytes (copies and renames): one content key, two or more items."""

    key: str
    items: tuple[Item, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(item.source for item in self.items))

    @property
    def labels(self) -> tuple[str, ...]:
        """The distinct labels the copies carry (unlabelled copies say nothing)."""
        return tuple(sorted({item.label for item in self.items if item.label is not None}))

    @property
    def conflicting(self) -> bool:
        return len(self.labels) > 1


@dataclass(frozen=True)
class NearPair:
    """Two images (in different sources, or in one when the search looked within sources)
    whose embeddings are closer than the threshold, though their bytes differ (resized,
    re-encoded, cropped copies)."""

    similarity: float
    first: Item
    second: Item


@dataclass(frozen=True)
class LabelIssue:
    """A labelled image whose out-of-fold prediction disagrees with its label. ``confidence`` is
    the probability the held-out head gave the label (self-confidence: low is suspicious)."""

    item: Item
    confidence: float
    suggested: str
    suggested_probability: float


@dataclass
class LabelFindings:
    """The label-error search: its issues, or why it could not run (``needs``), and what it
    left out (classes with too few images, unlabelled images)."""

    issues: list[LabelIssue] = field(default_factory=list)
    needs: str | None = None  # set when the search did not run: what it needs
    searched: int = 0  # labelled images that were given out-of-fold probabilities
    folds: int = 0
    skipped_classes: dict[str, int] = field(default_factory=dict)  # class -> its image count
    unlabelled: int = 0
    heldout_accuracy: float | None = None  # of the out-of-fold predictions


@dataclass
class AuditFindings:
    """Everything one audit found, each list ranked most important first."""

    sources: dict[str, int]  # source as given -> images audited
    exact: list[ExactGroup]
    conflicts: list[ExactGroup]
    near: list[NearPair] | None  # None: fewer than two sources, nothing to compare
    near_threshold: float
    labels: LabelFindings
    labelled_sources: dict[str, bool] = field(default_factory=dict)
    missing: int = 0  # images listed that had no embedding (failed to decode), left out
    near_within: bool = False  # whether near pairs within a source were looked for
