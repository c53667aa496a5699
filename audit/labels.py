"""Likely label errors by confident learning (Northcutt et al., 2021, through ``cleanlab``).

Every labelled image gets probabilities from a logistic head that never saw it: the images are
split into stratified folds, a head is trained on the cached embeddings of all folds but one,
and predicts the one left out. ``cleanlab.filter.find_label_issues`` then flags the images whose
label the held-out heads found unlikely, and they are ranked by self-confidence (the probability
of the given label), lowest first.

The training data of each fold is held in memory (a head fits on an array), so it is capped by
:attr:`LabelSearch.max_train_rows`; every image is still predicted, a block at a time. The
out-of-fold probabilities themselves are one float32 array of images x classes (40 MB for
100,000 images in 100 classes, 4 GB for a million in 1,000): ``cleanlab``'s
``find_label_issues`` takes them whole, so they are kept as small as float32 allows rather
than written out in blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headstart.audit.findings import LabelFindings, LabelIssue
from headstart.audit.settings import LabelSearch
from headstart.audit.sources import BLOCK_ROWS, AuditSource

__all__ = [
    "OutOfFold",
    "find_label_errors",
    "out_of_fold_probabilities",
    "rank_label_issues",
]

log = logging.getLogger(__name__)


@dataclass
class OutOfFold:
    """The labelled images searched and their held-out probabilities: where each image is
    (``source``, ``row``), its class code ``y`` into ``classes``, and (images, classes)
    ``probabilities`` from a head that did not train on it. Also what was left out."""

    source: np.ndarray  # int16
    row: np.ndarray  # int32
    y: np.ndarray  # int32
    classes: np.ndarray
    skipped_classes: dict[str, int]
    unlabelled: int
    probabilities: np.ndarray | None = None


def find_label_errors(sources: Sequence[AuditSource], search: LabelSearch) -> LabelFindings:
    """Likely label errors among the labelled images of ``sources``; classes with fewer images
    than folds are named and left out, and a search that cannot run says what it needs."""
    pool = out_of_fold_probabilities(sources, search)
    findings = LabelFindings(folds=search.folds)
    findings.skipped_classes, findings.unlabelled = pool.skipped_classes, pool.unlabelled
    if pool.probabilities is None:
        findings.needs = _needs(pool, search)
        return findings
    findings.searched = len(pool.y)
    predicted = pool.probabilities.argmax(axis=1)
    findings.heldout_accuracy = float(np.mean(predicted == pool.y))
    for i in rank_label_issues(pool, search.filter_by).tolist():
        source = sources[int(pool.source[i])]
        findings.issues.append(
            LabelIssue(
                item=source.item(int(pool.row[i])),
                confidence=float(pool.probabilities[i, pool.y[i]]),
                suggested=str(pool.classes[predicted[i]]),
                suggested_probability=float(pool.probabilities[i, predicted[i]]),
            )
        )
    return findings


def rank_label_issues(pool: OutOfFold, filter_by: str) -> np.ndarray:
    """Indices (into the pool) of the likely label errors, lowest self-confidence first."""
    from cleanlab.filter import find_label_issues

    return find_label_issues(
        labels=pool.y,
        pred_probs=pool.probabilities,
        filter_by=filter_by,
        return_indices_ranked_by="self_confidence",
        n_jobs=1,  # cleanlab's process pool costs more than it saves at these sizes
    )


def _needs(pool: OutOfFold, search: LabelSearch) -> str:
    if not len(pool.y) and not pool.skipped_classes:
        return (
            "labels: give sources with class folders (root/CLASS/image.jpg) or a manifest of "
            "path,label lines"
        )
    return (
        f"at least two classes with {search.folds} or more labelled images each "
        "(one held out per fold)"
    )


def _pool(sources: Sequence[AuditSource], folds: int) -> OutOfFold:
    """The labelled images of classes with at least ``folds`` images; the classes skipped
    (with their counts), and how many images had no label."""
    source_ids, rows, labels = [], [], []
    unlabelled = 0
    for i, source in enumerate(sources):
        has = np.array([label is not None for label in source.data.labels], dtype=bool)
        unlabelled += int((~has).sum())
        kept = np.flatnonzero(has).astype(np.int32)
        source_ids.append(np.full(len(kept), i, dtype=np.int16))
        rows.append(kept)
        labels.append(source.data.labels[kept].astype(str))
    all_labels = np.concatenate(labels)
    classes, y, counts = np.unique(all_labels, return_inverse=True, return_counts=True)
    skipped = {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < folds}
    if skipped:
        log.info("classes with fewer than %d images left out: %s", folds, ", ".join(skipped))
    keep = counts[y] >= folds
    recode = np.cumsum(counts >= folds) - 1  # old class code -> code among the kept classes
    return OutOfFold(
        source=np.concatenate(source_ids)[keep],
        row=np.concatenate(rows)[keep],
        y=recode[y[keep]].astype(np.int32),
        classes=classes[counts >= folds],
        skipped_classes=skipped,
        unlabelled=unlabelled,
    )


def out_of_fold_probabilities(sources: Sequence[AuditSource], search: LabelSearch) -> OutOfFold:
    """The labelled images of ``sources`` with probabilities from heads that did not train on
    them; ``probabilities`` stays None when fewer than two classes have enough images."""
    from sklearn.model_selection import StratifiedKFold

    from headstart.classify.heads import get_head

    pool = _pool(sources, search.folds)
    n, k = len(pool.y), len(pool.classes)
    if k < 2:
        return pool
    fold_of = np.empty(n, dtype=np.int8)
    splitter = StratifiedKFold(n_splits=search.folds, shuffle=True, random_state=search.seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros((n, 1)), pool.y)):
        fold_of[held] = fold
    # The training pool: every image, or a random sample when there are too many to hold.
    sample = np.arange(n)
    if n > search.max_train_rows:
        rng = np.random.default_rng(search.seed)
        sample = np.sort(rng.choice(n, search.max_train_rows, replace=False))
    X_sample = _vectors(sources, pool, sample)
    head_class = get_head("logreg")
    probabilities = np.zeros((n, k), dtype=np.float32)
    for fold in range(search.folds):
        train = fold_of[sample] != fold
        head = head_class(C=search.C, max_iter=search.max_iter, device=search.device)
        head.fit(X_sample[train], pool.y[sample[train]])
        columns = head.classes_.astype(np.int64)  # a class may be missing from a sample
        held = np.flatnonzero(fold_of == fold)
        for start in range(0, len(held), BLOCK_ROWS):
            block = held[start : start + BLOCK_ROWS]
            X = X_sample[block] if len(sample) == n else _vectors(sources, pool, block)
            probabilities[np.ix_(block, columns)] = head.predict_proba(X)
        log.info("fold %d/%d: trained on %d images", fold + 1, search.folds, int(train.sum()))
    pool.probabilities = probabilities
    return pool


def _vectors(sources: Sequence[AuditSource], pool: OutOfFold, indices: np.ndarray) -> np.ndarray:
    """Vectors of pooled images ``indices``, read from the store (one for every source)."""
    keys = np.empty(len(indices), dtype="S64")
    for i, source in enumerate(sources):
        mine = pool.source[indices] == i
        keys[mine] = source.data.keys[pool.row[indices[mine]]]
    return sources[0].data.store.get(keys)
