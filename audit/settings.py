"""What an audit is asked to do: plain records and their measured defaults, importable
without the cache, torch or FAISS (the command line reads its defaults from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_NEAR_THRESHOLD", "FLAT_MAX_ROWS", "AuditOptions", "LabelSearch", "NearSearch"]

# Cosine similarity (of centred embeddings) over which two different files count as
# near-duplicates. Measured by bench/audit_planted.py with a small CNN trained on imagenette
# photos: every planted half-size and quality-60 copy scored over 0.99 and 10%-cropped ones
# over 0.91, so 0.9 keeps them all; at 0.95 about one crop in twenty was lost. Different
# photos of the same scene (parachutes in a blue sky) also reach 0.99 with so small a
# network, which is why the pairs are ranked: copies come first.
DEFAULT_NEAR_THRESHOLD = 0.90


# Above this many indexed vectors an inverted file replaces the exact search. Measured by
# bench/audit_speed.py (2 shared cores, 512 dimensions, as many queries as indexed rows):
# flat 0.3 s / IVF 0.5 s at 5,000, 2.1 / 1.9 s at 20,000, 21 / 17 s at 40,000. Reading the
# vectors from the store is most of the IVF time at these sizes.
FLAT_MAX_ROWS = 5_000


@dataclass(frozen=True)
class NearSearch:
    """How near-duplicates are searched: the cosine threshold, how many neighbours each
    image looks at, the device (None: the GPUs FAISS sees, if any), and whether pairs within
    a source count too (across sources only by default: a leak between splits)."""

    threshold: float = DEFAULT_NEAR_THRESHOLD
    neighbours: int = 8
    gpu: bool | None = None
    flat_max_rows: int = FLAT_MAX_ROWS  # indexed vectors searched exactly; more: IVF
    centre: bool = True  # subtract the sources' mean vector before the cosine
    # Also pairs within each source (every source is then indexed, the largest too).
    within: bool = False


@dataclass(frozen=True)
class LabelSearch:
    """How label errors are searched.

    ``C`` is the logistic head's inverse regularisation (scikit-learn's convention), fixed so
    the audit costs one fit per fold. ``filter_by`` is cleanlab's method: "both" (an image
    must be flagged by the noise-rate pruning and by the confident joint) gave 38% precision at
    80% recall on bench/audit_planted.py's 10% flipped labels, against cleanlab's default
    (``prune_by_noise_rate``) at 33% and 82%; C=0.01 beat 0.1 by about as much.
    """

    folds: int = 5
    C: float = 0.01
    # Out-of-fold probabilities need a good head, not the last digit of the optimum (a sweep's
    # path fits stop at 15 evaluations): 30 loss evaluations of the preconditioned solver, on
    # at most 10,000 images, keep 5 folds of 100 classes at 512 dimensions to seconds of CPU
    # (bench/audit_speed.py); the planted photos' figures were the same as at 200 and 50,000.
    max_iter: int = 30
    max_train_rows: int = 10_000
    filter_by: str = "both"
    seed: int = 0
    device: str = "cpu"  # fp32 on the CPU: the same findings on every machine


@dataclass(frozen=True)
class AuditOptions:
    """What the audit looks for and how."""

    near: NearSearch = field(default_factory=NearSearch)
    labels: LabelSearch = field(default_factory=LabelSearch)
    find_label_errors: bool = True
