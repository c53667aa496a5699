"""Classification metrics, computed from a head's probabilities and the true labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as sk

__all__ = ["Metrics", "per_class_report", "score"]


@dataclass(frozen=True)
class Metrics:
    """Accuracy, balanced accuracy, macro-F1, and log-loss where probabilities mean something."""

    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    log_loss: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def score(
    y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, *, probabilistic: bool = True
) -> Metrics:
    """Metrics of predictions ``classes[argmax(proba)]`` against ``y_true``.

    True labels the head never saw count as errors; log-loss is left out then, and for heads
    whose scores are not probabilities.
    """
    y_true = np.asarray(y_true).astype(str)
    names = np.asarray(classes).astype(str)
    y_pred = names[np.argmax(proba, axis=1)]
    log_loss = None
    if probabilistic and np.isin(y_true, names).all():
        clipped = np.clip(proba, 1e-7, 1)
        clipped /= clipped.sum(axis=1, keepdims=True)
        # Column j is classes[j]. Not sklearn's log_loss: it takes the columns to be the labels
        # sorted as strings, which '10' < '2' (class indices, as the fine-tuning loop names
        # them) breaks.
        column = {name: j for j, name in enumerate(names)}
        picked = clipped[np.arange(len(y_true)), [column[label] for label in y_true]]
        log_loss = float(-np.log(picked).mean())
    return Metrics(
        n=len(y_true),
        accuracy=float(sk.accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(sk.balanced_accuracy_score(y_true, y_pred)),
        macro_f1=float(sk.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        log_loss=log_loss,
    )


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray) -> str:
    """Precision, recall, F1 and support per class, as a text table."""
    return sk.classification_report(
        np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str), digits=3, zero_division=0
    )
