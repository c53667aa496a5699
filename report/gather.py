"""The numbers a report shows, gathered from a head directory or a fine-tuning run directory
and, when given, the labelled sources the head is evaluated on.

Everything an evaluation yields per image is cut down here to sizes a page can hold: the most
confident mistakes (a fixed number) and a random sample of vectors for the map. A report on a
million images is then the size of one on a thousand; only the per-class numbers grow, with
the classes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.classify.metrics import Metrics, score
from headstart.classify.overlap import Overlap
from headstart.classify.persist import HEAD_DOCUMENT, LoadedHead, load_head
from headstart.errors import HeadstartError
from headstart.finetune.settings import CONFIG, HEAD, METRICS, WISE

__all__ = [
    "MAX_MAP_POINTS",
    "MAX_MISTAKES",
    "ClassRow",
    "Evaluated",
    "HeadSummary",
    "LeaderboardEntry",
    "Mistake",
    "ReportData",
    "Target",
    "find_target",
    "gather",
    "summarise_predictions",
]

MAX_MISTAKES = 24  # thumbnails in the gallery: enough to see a pattern, each about 3 KB
MAX_MAP_POINTS = 2000  # a map stays readable, and quick to project, at this many points


@dataclass(frozen=True)
class HeadSummary:
    """What ``head.json`` says about a saved head."""

    directory: Path
    head_name: str
    params: dict[str, Any]
    classes: list[str]
    embeddings: str  # the fingerprint, described for people
    fingerprint_id: str
    metrics: dict[str, Any]  # as recorded at training time (validation)
    validation: str | None


@dataclass(frozen=True)
class LeaderboardEntry:
    """One head and hyper-parameter value as ``train`` scored it on validation."""

    head: str
    param: str | None
    value: Any
    accuracy: float
    balanced_accuracy: float | None
    macro_f1: float | None
    log_loss: float | None
    fit_seconds: float | None
    note: str
    chosen: bool


@dataclass(frozen=True)
class ClassRow:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Mistake:
    """An image the head got wrong; ``confidence`` is its score for the predicted class."""

    path: str
    true: str
    predicted: str
    confidence: float


@dataclass
class Evaluated:
    """A head's answers on labelled images, reduced to bounded sizes."""

    metrics: Metrics
    classes: list[str]  # rows (true) and columns (predicted) of ``confusion``
    confusion: np.ndarray
    per_class: list[ClassRow]
    mistakes: list[Mistake]  # the most confident first, at most MAX_MISTAKES
    n_mistakes: int
    map_vectors: np.ndarray  # at most MAX_MAP_POINTS rows, drawn at random
    map_labels: np.ndarray
    probabilistic: bool
    sources: list[str] = field(default_factory=list)
    missing: int = 0
    unknown: dict[str, int] = field(default_factory=dict)  # true classes the head never saw
    # Which evaluated images the head was trained on (by content); None: not looked at.
    overlap: Overlap | None = None


@dataclass(frozen=True)
class Target:
    """What HEAD_DIR names: a saved head, or a fine-tuning run (with its head once finished)."""

    path: Path
    kind: str  # "head" or "finetune"
    head_dir: Path | None


@dataclass
class ReportData:
    target: Target
    head: HeadSummary | None
    leaderboard: list[LeaderboardEntry]
    history: list[dict[str, Any]]  # a fine-tuning run's epochs (epoch 0: the linear probe)
    run_config: dict[str, Any]
    evaluated: Evaluated | None
    wise: dict[str, Any] = field(default_factory=dict)  # a --wise run's wise.json


def find_target(path: str | os.PathLike[str]) -> Target:
    """A fine-tuning run directory holds ``metrics.jsonl`` (written from its first epoch on, so
    even an interrupted run has curves); a head directory holds ``head.json``."""
    path = Path(path)
    if not path.is_dir():
        raise HeadstartError(
            f"{path} is not a directory; give a head directory (train -o) or a fine-tuning "
            "run directory (finetune -o)"
        )
    if (path / METRICS).is_file():
        head = path / HEAD
        return Target(path, "finetune", head if (head / HEAD_DOCUMENT).is_file() else None)
    if (path / HEAD_DOCUMENT).is_file():
        return Target(path, "head", path)
    raise HeadstartError(
        f"{path} holds neither a saved head ({HEAD_DOCUMENT}, from train -o) nor a "
        f"fine-tuning run ({METRICS}, from finetune -o)"
    )


def gather(
    target: Target,
    sources: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    runtime: dict | None = None,
    progress: bool = False,
    seed: int = 0,
) -> ReportData:
    """Read what ``target`` recorded and, when ``sources`` are given, evaluate its head on them
    (embedding what the cache lacks, as ``headstart evaluate`` does)."""
    if sources and target.head_dir is None:
        raise HeadstartError(
            f"{target.path} has no fine-tuned head yet (the run did not finish); finish it "
            f"with --resume, or report on it without SOURCES to see its curves"
        )
    history = _read_history(target.path / METRICS) if target.kind == "finetune" else []
    run_config = _read_config(target.path / CONFIG) if target.kind == "finetune" else {}
    wise = _read_config(target.path / WISE) if target.kind == "finetune" else {}
    loaded = evaluated = None
    if sources:
        from headstart.classify.workflow import score_head, training_overlap

        scored = score_head(
            target.head_dir,
            sources,
            cache_dir,
            runtime=runtime,
            progress=progress,
            purpose="report",
        )
        loaded = scored.loaded
        head = loaded.head
        evaluated = summarise_predictions(
            scored.labels,
            scored.proba,
            np.asarray(head.classes_).astype(str),
            scored.data.paths,
            scored.data.X,
            probabilistic=head.probabilistic,
            seed=seed,
        )
        evaluated.sources = list(sources)
        evaluated.missing = scored.data.missing
        evaluated.overlap = training_overlap(scored)
    elif target.head_dir is not None:
        loaded = load_head(target.head_dir)
    head_summary = _head_summary(loaded, target.head_dir) if loaded else None
    notes = loaded.document.get("notes", {}) if loaded else {}
    return ReportData(
        target, head_summary, _leaderboard(notes), history, run_config, evaluated, wise
    )


def summarise_predictions(
    labels: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    paths: Sequence[str],
    X: np.ndarray,
    *,
    probabilistic: bool = True,
    max_mistakes: int = MAX_MISTAKES,
    max_points: int = MAX_MAP_POINTS,
    seed: int = 0,
) -> Evaluated:
    """Metrics, confusion matrix, per-class table, the most confident mistakes and a map sample
    of predictions ``classes[argmax(proba)]`` against true ``labels``.

    Example:
        >>> e = summarise_predictions(np.array(["a", "b"]), np.array([[.9, .1], [.8, .2]]),
        ...                           np.array(["a", "b"]), ["1.jpg", "2.jpg"], np.eye(2))
        >>> e.mistakes[0].path, e.confusion.tolist()
        ('2.jpg', [[1, 0], [1, 0]])
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.asarray(labels).astype(str)
    classes = np.asarray(classes).astype(str)
    proba = np.asarray(proba)
    predicted_index = proba.argmax(axis=1)
    predicted = classes[predicted_index]
    # True classes the head never saw are rows of their own (their column stays empty).
    unknown = sorted(set(labels.tolist()) - set(classes.tolist()))
    shown = [*classes.tolist(), *unknown]
    confusion = confusion_matrix(labels, predicted, labels=shown)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=shown, zero_division=0
    )
    per_class = [
        ClassRow(name, float(p), float(r), float(f), int(s))
        for name, p, r, f, s in zip(shown, precision, recall, f1, support, strict=True)
    ]
    confidence = proba[np.arange(len(proba)), predicted_index]
    wrong = np.flatnonzero(predicted != labels)
    # Most confident first; a stable sort keeps source order among equal scores.
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_mistakes]
    mistakes = [
        Mistake(paths[i], labels[i], predicted[i], float(confidence[i])) for i in worst.tolist()
    ]
    rng = np.random.default_rng(seed)
    rows = np.arange(len(labels))
    if len(rows) > max_points:
        rows = np.sort(rng.choice(len(rows), max_points, replace=False))
    counts = {name: int((labels == name).sum()) for name in unknown}
    return Evaluated(
        metrics=score(labels, proba, classes, probabilistic=probabilistic),
        classes=shown,
        confusion=confusion,
        per_class=per_class,
        mistakes=mistakes,
        n_mistakes=len(wrong),
        map_vectors=np.asarray(X[rows], dtype=np.float32),
        map_labels=labels[rows],
        probabilistic=probabilistic,
        unknown=counts,
    )


def _head_summary(loaded: LoadedHead, directory: Path) -> HeadSummary:
    document = loaded.document
    validation = document.get("notes", {}).get("validation")
    if isinstance(validation, list):
        validation = ", ".join(str(v) for v in validation)
    return HeadSummary(
        directory=directory,
        head_name=str(document.get("head")),
        params=dict(document.get("params") or {}),
        classes=[str(c) for c in document.get("classes", [])],
        embeddings=loaded.fingerprint.describe(),
        fingerprint_id=loaded.fingerprint.id,
        metrics=dict(document.get("metrics") or {}),
        validation=validation,
    )


def _leaderboard(notes: Mapping[str, Any]) -> list[LeaderboardEntry]:
    """``train``'s leaderboard as ``head.json`` records it; heads saved before the saved row
    was recorded get no mark."""
    records = notes.get("leaderboard")
    if not isinstance(records, list):
        return []
    chosen = notes.get("leaderboard_chosen")
    entries = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "accuracy" not in record:
            continue
        entries.append(
            LeaderboardEntry(
                head=str(record.get("head")),
                param=record.get("param"),
                value=record.get("value"),
                accuracy=float(record["accuracy"]),
                balanced_accuracy=record.get("balanced_accuracy"),
                macro_f1=record.get("macro_f1"),
                log_loss=record.get("log_loss"),
                fit_seconds=record.get("fit_seconds"),
                note=str(record.get("note") or ""),
                chosen=i == chosen,
            )
        )
    return entries


def _read_history(path: Path) -> list[dict[str, Any]]:
    epochs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadstartError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise HeadstartError(f"{path}:{number} is not a JSON line (damaged?)") from None
        if isinstance(record, dict) and {"epoch", "val_accuracy", "val_loss"} <= set(record):
            epochs.append(record)
    return epochs


def _read_config(path: Path) -> dict[str, Any]:
    """A run's JSON record (its options, its WiSE mixes), shown for context only: a missing or
    damaged file costs nothing."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}
