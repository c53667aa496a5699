"""The jobs behind ``headstart train``, ``evaluate`` and ``predict``.

Each takes image sources, gets their embeddings through the cache (embedding only what is
missing) and hands arrays to the heads, metrics and indexes; the command line only prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.classify.data import (
    Embedded,
    class_counts,
    embed_sources,
    train_and_validation,
)
from headstart.classify.heads import Head, get_head
from headstart.classify.metrics import Metrics, per_class_report, score
from headstart.classify.persist import LoadedHead, load_head, save_head
from headstart.classify.settings import TrainOptions
from headstart.classify.sweep import LeaderboardRow, fit_and_score, refit, sweep
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, options_for_fingerprint

__all__ = [
    "TrainOptions",
    "TrainResult",
    "evaluate_head",
    "predict_with_head",
    "score_head",
    "train_head",
]


@dataclass
class TrainResult:
    head: Head
    chosen: LeaderboardRow | None  # None: nothing to validate on (zeroshot from names alone)
    rows: list[LeaderboardRow]
    class_counts: dict[str, int]
    n_train: int
    n_val: int
    refit: bool
    missing: int
    left_out: dict[str, str] = field(default_factory=dict)  # head -> why it does not apply
    head_dir: Path | None = None
    plots: list[Path] = field(default_factory=list)


def train_head(
    sources: Sequence[str],
    embed: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    options: TrainOptions,
    out: str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
) -> TrainResult:
    """Fit (or sweep) heads on the sources' embeddings, choose on validation, save the best.

    ``zeroshot`` alone with ``options.classes`` needs no labelled images: ``sources`` may be
    unlabelled or none, and validation is then ``options.val_sources`` if given, else none.
    """
    for name in options.heads:
        get_head(name)  # unknown names fail before any embedding
    if set(options.heads) == {"zeroshot"}:
        return _train_zeroshot(sources, embed, cache_dir, options, out, progress)
    if not sources:
        raise HeadstartError("give labelled SOURCES to train on")
    data = embed_sources(sources, embed, cache_dir, progress=progress)
    return _train_on(data, embed, cache_dir, options, out, progress)


def _train_on(
    data: Embedded, embed: ExtractOptions, cache_dir, options: TrainOptions, out, progress: bool
) -> TrainResult:
    counts = class_counts(data.require_labels("training"))
    rare = [name for name, count in counts.items() if count < 2]
    if rare:
        raise HeadstartError(f"classes need at least 2 images each; too few: {', '.join(rare)}")
    train, val = train_and_validation(
        data,
        options.val_sources,
        options.val_split,
        options.seed,
        embed,
        cache_dir,
        purpose="training",
        progress=progress,
    )
    zeroshot = _zeroshot_inputs(options, options.classes or list(counts), cache_dir, embed)
    rows, left_out = _leaderboard(options, train, val, zeroshot)
    chosen = max(rows, key=lambda r: (r.metrics.accuracy, r.metrics.balanced_accuracy))
    head = chosen.estimator
    refitted = options.sweep and options.refit and head.learns_from_images
    if refitted:
        both = np.concatenate([train.labels, val.labels]).astype(str)
        head = refit(chosen, np.concatenate([train.X, val.X]), both)
    result = TrainResult(
        head, chosen, rows, counts, len(train.X), len(val.X), refitted, data.missing, left_out
    )
    if out is not None:
        result.head_dir = _save(result, options, data.fingerprint, Path(out))
        if options.plot:
            result.plots = _plots(chosen.estimator, train, val, Path(out))
    return result


def _leaderboard(
    options: TrainOptions, train: Embedded, val: Embedded, zeroshot: dict
) -> tuple[list[LeaderboardRow], dict[str, str]]:
    """Every asked head scored on validation: each at its given parameters, or swept, and the
    zero-shot head as built; with the heads left out for these embeddings, and why."""
    from headstart.classify.zeroshot import zeroshot_row
    from headstart.extract.text import why_no_text

    y, y_val = train.labels.astype(str), val.require_labels("validation")
    learned = [name for name in options.heads if get_head(name).learns_from_images]
    if options.sweep:
        rows = sweep(learned, train.X, y, val.X, y_val, base_params=options.params)
    else:
        rows = [_single(n, options.params.get(n, {}), train.X, y, val.X, y_val) for n in learned]
    reason = why_no_text(train.fingerprint) if "zeroshot" in options.heads else None
    if "zeroshot" in options.heads and reason is None:
        rows.append(
            zeroshot_row(fingerprint=train.fingerprint, X_val=val.X, y_val=y_val, **zeroshot)
        )
    return rows, {"zeroshot": reason} if reason else {}


def _zeroshot_inputs(options: TrainOptions, classes, cache_dir, embed: ExtractOptions) -> dict:
    prompts = options.params.get("zeroshot", {}).get("prompts", "openai")
    return {"classes": classes, "cache_dir": cache_dir, "prompts": prompts, "device": embed.device}


def _train_zeroshot(
    sources, embed: ExtractOptions, cache_dir, options, out, progress
) -> TrainResult:
    """``--head zeroshot`` alone: as any head on labelled sources, else from ``options.classes``
    with no images (validated on ``options.val_sources`` when given)."""
    from headstart.classify.zeroshot import refuse_without_text, zeroshot_head, zeroshot_row
    from headstart.extract import resolve_recipe

    fingerprint = resolve_recipe(embed).fingerprint
    refuse_without_text(fingerprint)  # before embedding anything
    data = embed_sources(sources, embed, cache_dir, progress=progress) if sources else None
    if data is not None and (options.classes is None or None not in set(data.labels)):
        return _train_on(data, embed, cache_dir, options, out, progress)
    if options.classes is None:
        raise HeadstartError("give labelled SOURCES, or the class names with --classes")
    zeroshot = _zeroshot_inputs(options, options.classes, cache_dir, embed)
    rows, n_val = [], 0
    if options.val_sources:
        val = embed_sources(options.val_sources, embed, cache_dir, progress=progress)
        y_val, n_val = val.require_labels("validation"), len(val.X)
        rows = [zeroshot_row(fingerprint=fingerprint, X_val=val.X, y_val=y_val, **zeroshot)]
    head = rows[0].estimator if rows else zeroshot_head(fingerprint=fingerprint, **zeroshot)
    missing = data.missing if data is not None else 0
    result = TrainResult(head, rows[0] if rows else None, rows, {}, 0, n_val, False, missing)
    if out is not None:
        result.head_dir = _save(result, options, fingerprint, Path(out))
    return result


def _save(result: TrainResult, options: TrainOptions, fingerprint: Fingerprint, out: Path) -> Path:
    notes = {
        "validation": list(options.val_sources)
        or (f"stratified split {options.val_split}" if result.rows else "none"),
        "refit_on_train_and_validation": result.refit,
        "class_counts": result.class_counts,
        "leaderboard": [_row_record(r) for r in result.rows],
        # Which row was saved, so a report marks it without re-deciding a tie.
        "leaderboard_chosen": next(
            (i for i, r in enumerate(result.rows) if r is result.chosen), None
        ),
    }
    metrics = result.chosen.metrics.as_dict() if result.chosen is not None else {}
    return save_head(result.head, out, fingerprint=fingerprint, metrics=metrics, notes=notes)


def _single(name: str, params: dict, X, y, X_val, y_val) -> LeaderboardRow:
    param, value = next(iter(params.items())) if params else (None, None)
    return fit_and_score(name, param, value, get_head(name)(**params), X, y, X_val, y_val)


def _row_record(row: LeaderboardRow) -> dict:
    value = row.value.item() if isinstance(row.value, np.generic) else row.value
    return {
        "head": row.head_name,
        "param": row.param,
        "value": value,
        "note": row.note,
        "fit_seconds": row.fit_seconds,
        **row.metrics.as_dict(),
    }


def _plots(head: Head, train: Embedded, val: Embedded, out: Path) -> list[Path]:
    from headstart.classify.plots import plot_confusion, plot_embedding_map

    val_labels = val.labels.astype(str)
    confusion = plot_confusion(
        val_labels, head.predict(val.X), head.classes_, out / "confusion.png"
    )
    both = np.concatenate([train.X, val.X])
    names = np.concatenate([train.labels, val.labels]).astype(str)
    return [confusion, plot_embedding_map(both, names, out / "embedding_map.png")]


@dataclass
class Evaluation:
    metrics: Metrics
    report: str
    missing: int
    unknown: dict[str, int]


def _embed_for(loaded_fingerprint, sources, cache_dir, runtime: dict, progress: bool) -> Embedded:
    options = options_for_fingerprint(loaded_fingerprint, **runtime)
    return embed_sources(sources, options, cache_dir, progress=progress)


@dataclass
class Scored:
    """A saved head's answers on labelled sources: what evaluations and reports start from."""

    loaded: LoadedHead
    data: Embedded
    labels: np.ndarray
    proba: np.ndarray


def score_head(
    head_dir: str | os.PathLike[str],
    sources: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    runtime: dict | None = None,
    progress: bool = False,
    purpose: str = "evaluate",
) -> Scored:
    """Load a saved head, embed the labelled sources as it was trained (only what the cache
    lacks) and take its probabilities; ``purpose`` names the command needing the labels."""
    loaded = load_head(head_dir)
    data = _embed_for(loaded.fingerprint, sources, cache_dir, runtime or {}, progress)
    labels = data.require_labels(purpose)
    return Scored(loaded, data, labels, loaded.head.predict_proba(data.X))


def evaluate_head(
    head_dir: str | os.PathLike[str],
    sources: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    runtime: dict | None = None,
    progress: bool = False,
) -> Evaluation:
    """Metrics and a per-class report of a saved head on labelled sources."""
    scored = score_head(head_dir, sources, cache_dir, runtime=runtime, progress=progress)
    data, labels, proba, head = scored.data, scored.labels, scored.proba, scored.loaded.head
    known = set(np.asarray(head.classes_).astype(str))
    unknown = {k: v for k, v in class_counts(labels).items() if k not in known}
    metrics = score(labels, proba, head.classes_, probabilistic=head.probabilistic)
    predicted = np.asarray(head.classes_)[proba.argmax(axis=1)]
    return Evaluation(metrics, per_class_report(labels, predicted), data.missing, unknown)


@dataclass
class Predictions:
    paths: list[str]
    proba: np.ndarray
    classes: np.ndarray
    missing: int
    failures: list


def predict_with_head(
    head_dir: str | os.PathLike[str],
    sources: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    runtime: dict | None = None,
    progress: bool = False,
) -> Predictions:
    loaded: LoadedHead = load_head(head_dir)
    data = _embed_for(loaded.fingerprint, sources, cache_dir, runtime or {}, progress)
    failures = data.summary.failure_examples if data.summary else []
    proba = loaded.head.predict_proba(data.X)
    return Predictions(data.paths, proba, np.asarray(loaded.head.classes_), data.missing, failures)
