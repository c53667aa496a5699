"""Heads by similarity: k-nearest neighbors (FAISS) and nearest class mean.

Both compare L2-normalised vectors by inner product, that is by cosine similarity. The kNN vote
is either a plain majority or the temperature-weighted vote of the DINO protocol, where each
neighbor counts ``exp(similarity / T)``.
"""

from __future__ import annotations

import numpy as np

from headstart.classify.heads import Head, HeadOption, register_head
from headstart.errors import HeadstartError
from headstart.search.exact import exact_search, l2_normalize  # re-exported: heads use them

__all__ = ["KNNHead", "NearestClassMeanHead", "exact_search", "knn_votes", "l2_normalize"]

VOTES = ("weighted", "majority")


def knn_votes(
    similarities: np.ndarray, labels: np.ndarray, n_classes: int, *, vote: str, temperature: float
) -> np.ndarray:
    """Class scores from neighbor similarities and labels (both (n, k)), rows summing to 1."""
    if vote not in VOTES:
        raise HeadstartError(f"unknown vote {vote!r}; use {' or '.join(VOTES)}")
    valid = labels >= 0  # FAISS pads with -1 when the database is smaller than k
    if vote == "weighted":
        # Shifting by the row maximum leaves the normalised vote unchanged and avoids overflow.
        weights = np.exp((similarities - similarities.max(axis=1, keepdims=True)) / temperature)
    else:
        weights = np.ones_like(similarities)
    weights = np.where(valid, weights, 0.0)
    scores = np.zeros((len(labels), n_classes), dtype=np.float64)
    rows = np.repeat(np.arange(len(labels)), labels.shape[1])
    np.add.at(scores, (rows, np.where(valid, labels, 0).ravel()), weights.ravel())
    return (scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)


# knn's weighted vote and ncm's probabilities soften cosine similarities alike: one option.
_TEMPERATURE = HeadOption(
    "temperature", float, "Softmax temperature of cosines.", minimum=0, above_minimum=True
)


@register_head("knn")
class KNNHead(Head):
    """k-nearest-neighbor vote over the training vectors, by cosine similarity.

    Example:
        >>> KNNHead(k=20, vote="weighted").fit(X, y).predict(X_new)  # doctest: +SKIP
    """

    options = (
        HeadOption("k", int, "Neighbors that vote.", minimum=1, flag="-k"),
        HeadOption("vote", str, "How neighbors vote.", choices=("weighted", "majority")),
        _TEMPERATURE,
    )
    grid = ("k", (10, 20, 100, 200))

    def __init__(self, k: int = 20, *, vote: str = "weighted", temperature: float = 0.07) -> None:
        self.k = k
        self.vote = vote
        self.temperature = temperature

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNNHead:
        X, index = self._encode(X, y)
        if self.k < 1:
            raise HeadstartError(f"k must be positive, got {self.k}")
        self.database_ = l2_normalize(X)
        self.labels_ = index
        return self

    def neighbors(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, class indices) of the ``k`` nearest training vectors of each row."""
        X = self._check_features(X)
        similarities, rows = exact_search(
            self.database_, l2_normalize(X), min(k, len(self.database_))
        )
        return similarities, np.where(rows >= 0, self.labels_[np.maximum(rows, 0)], -1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        similarities, labels = self.neighbors(X, self.k)
        return knn_votes(
            similarities, labels, len(self.classes_), vote=self.vote, temperature=self.temperature
        )

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"database": self.database_, "labels": self.labels_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.database_ = np.ascontiguousarray(arrays["database"], dtype=np.float32)
        self.labels_ = arrays["labels"].astype(np.int64)
        self.n_features_in_ = self.database_.shape[1]


@register_head("ncm")
class NearestClassMeanHead(Head):
    """Nearest class mean by cosine similarity; probabilities are ``softmax(cos / T)``."""

    options = (_TEMPERATURE,)

    def __init__(self, *, temperature: float = 0.07) -> None:
        self.temperature = temperature

    def fit(self, X: np.ndarray, y: np.ndarray) -> NearestClassMeanHead:
        X, index = self._encode(X, y)
        X = l2_normalize(X)
        sums = np.zeros((len(self.classes_), X.shape[1]), dtype=np.float64)
        np.add.at(sums, index, X)
        self.centroids_ = l2_normalize(sums)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        logits = l2_normalize(self._check_features(X)) @ self.centroids_.T / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.centroids_ = arrays["centroids"].astype(np.float32)
        self.n_features_in_ = self.centroids_.shape[1]
