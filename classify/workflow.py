"""The jobs behind ``headstart train``, ``evaluate`` and ``predict``.

Each takes image sources, gets their embeddings through the cache (embedding only what is
missing) and hands them to the heads, metrics and indexes; the command line only prints.
``train`` hands the heads block sources (:mod:`~headstart.classify.blocks`) sized from a memory
budget, ``evaluate`` and ``predict`` read vectors a block at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.classify.blocks import Blocks, ChainedBlocks
from headstart.classify.budget import MemoryBudget
from headstart.classify.data import (
    Embedded,
    Planned,
    class_counts,
    embed_sources,
    plan_sources,
    split_planned,
)
from headstart.classify.heads import Head, get_head
from headstart.classify.metrics import Metrics, per_class_report, score
from headstart.classify.overlap import Overlap, split_scores, training_key_prefixes
from headstart.classify.persist import LoadedHead, load_head, save_head
from headstart.classify.persist import training_key_prefixes as recorded_training_keys
from headstart.classify.settings import TrainOptions
from headstart.classify.sweep import LeaderboardRow, fit_and_score, refit, sweep_blocks
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, options_for_fingerprint

# A head fitted on no image (zero-shot, from class names): overlap is known to be none.
_NO_KEYS = np.empty(0, dtype=np.uint64)

__all__ = [
    "Overlap",
    "TrainOptions",
    "TrainResult",
    "evaluate_head",
    "predict_with_head",
    "score_head",
    "train_head",
    "training_overlap",
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
    data = plan_sources(sources, embed, cache_dir, progress=progress)
    return _train_on(data, embed, cache_dir, options, out, progress)


def _class_counts(source: Blocks) -> dict[str, int]:
    counts = np.bincount(source.codes[source.codes >= 0], minlength=len(source.classes))
    return {str(name): int(c) for name, c in zip(source.classes, counts, strict=True) if c}


def _train_on(
    data: Planned, embed: ExtractOptions, cache_dir, options: TrainOptions, out, progress: bool
) -> TrainResult:
    source = data.require_labels("training")
    counts = _class_counts(source)
    rare = [name for name, count in counts.items() if count < 2]
    if rare:
        raise HeadstartError(f"classes need at least 2 images each; too few: {', '.join(rare)}")
    # Before any vector is read: the heads' state and one block must fit the budget.
    block_rows = plan_memory(options, len(source), source.dim, len(counts))
    train, val = split_planned(
        data,
        options.val_sources,
        options.val_split,
        options.seed,
        embed,
        cache_dir,
        purpose="training",
        progress=progress,
    )
    train, val = train.with_block_rows(block_rows), val.with_block_rows(block_rows)
    zeroshot = _zeroshot_inputs(options, options.classes or list(counts), cache_dir, embed)
    rows, left_out = _leaderboard(options, train, val, data.fingerprint, zeroshot)
    chosen = max(rows, key=lambda r: (r.metrics.accuracy, r.metrics.balanced_accuracy))
    head = chosen.estimator
    refitted = options.sweep and options.refit and head.learns_from_images
    if refitted:  # train then validation, read in turn: nothing concatenated
        head = refit(chosen, ChainedBlocks([train, val]))
    result = TrainResult(
        head, chosen, rows, counts, len(train), len(val), refitted, data.missing, left_out
    )
    if out is not None:
        # What the saved head was fitted on: train, and validation too after a refit.
        seen = ChainedBlocks([train, val]) if refitted else train
        trained_on = training_key_prefixes(seen) if head.learns_from_images else _NO_KEYS
        result.head_dir = _save(result, options, data.fingerprint, Path(out), trained_on)
        if options.plot:
            result.plots = _plots(chosen.estimator, train, val, Path(out))
    return result


def plan_memory(options: TrainOptions, n: int, d: int, n_classes: int) -> int:
    """Rows a block for training ``options.heads`` on ``n`` rows of width ``d`` within
    ``options.max_memory`` (default: half the free memory); refuses, in one line, heads or a
    budget that cannot fit, before any vector is read."""
    if "logreg" in options.heads:
        from headstart.classify.logistic import load_solver

        load_solver()  # a fixed cost, counted among what is held before the budget is split
    budget = MemoryBudget.of(options.max_memory)
    learned = [get_head(name) for name in options.heads if get_head(name).learns_from_images]
    # Every row's int32 class code, and a view's int64 row numbers, whatever the head.
    fixed, per_row = 12 * n, 14 * d
    for head in learned:
        values = len(head.grid[1]) if options.sweep and head.grid else 1
        need = head.fit_bytes(n, d, n_classes, values)
        if not head.streams:
            budget.require(
                need,
                f"--head {head.head_name} holds all {n} vectors of {d} dimensions in memory",
                "use --head logreg or --head ridge, which stream from the cache",
            )
        fixed = max(fixed, 12 * n + need)  # heads are fitted one after another
        per_row = max(per_row, head.block_row_bytes(d, n_classes, values))
    return budget.block_rows(fixed, per_row, f"training {', '.join(options.heads)}")


def _leaderboard(
    options: TrainOptions, train: Blocks, val: Blocks, fingerprint: Fingerprint, zeroshot: dict
) -> tuple[list[LeaderboardRow], dict[str, str]]:
    """Every asked head scored on validation: each at its given parameters, or swept, and the
    zero-shot head as built; with the heads left out for these embeddings, and why."""
    from headstart.classify.zeroshot import zeroshot_row
    from headstart.extract.text import why_no_text

    learned = [name for name in options.heads if get_head(name).learns_from_images]
    if options.sweep:
        rows = sweep_blocks(learned, train, val, base_params=options.params)
    else:
        rows = [_single(n, options.params.get(n, {}), train, val) for n in learned]
    reason = why_no_text(fingerprint) if "zeroshot" in options.heads else None
    if "zeroshot" in options.heads and reason is None:
        rows.append(zeroshot_row(fingerprint=fingerprint, X_val=val, y_val=None, **zeroshot))
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
    data = plan_sources(sources, embed, cache_dir, progress=progress) if sources else None
    if data is not None and (options.classes is None or not data.unlabelled):
        return _train_on(data, embed, cache_dir, options, out, progress)
    if options.classes is None:
        raise HeadstartError("give labelled SOURCES, or the class names with --classes")
    zeroshot = _zeroshot_inputs(options, options.classes, cache_dir, embed)
    rows, n_val = [], 0
    if options.val_sources:
        planned = plan_sources(options.val_sources, embed, cache_dir, progress=progress)
        val = planned.require_labels("validation")
        n_val = len(val)
        rows = [zeroshot_row(fingerprint=fingerprint, X_val=val, y_val=None, **zeroshot)]
    head = rows[0].estimator if rows else zeroshot_head(fingerprint=fingerprint, **zeroshot)
    missing = data.missing if data is not None else 0
    result = TrainResult(head, rows[0] if rows else None, rows, {}, 0, n_val, False, missing)
    if out is not None:
        result.head_dir = _save(result, options, fingerprint, Path(out), _NO_KEYS)
    return result


def _save(
    result: TrainResult,
    options: TrainOptions,
    fingerprint: Fingerprint,
    out: Path,
    trained_on: np.ndarray | None,
) -> Path:
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
    return save_head(
        result.head,
        out,
        fingerprint=fingerprint,
        metrics=metrics,
        notes=notes,
        training_keys=trained_on,
    )


def _single(name: str, params: dict, train: Blocks, val: Blocks) -> LeaderboardRow:
    param, value = next(iter(params.items())) if params else (None, None)
    return fit_and_score(name, param, value, get_head(name)(**params), train, val)


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


def _plots(head: Head, train: Blocks, val: Blocks, out: Path) -> list[Path]:
    from headstart.classify.plots import _MAP_POINTS, plot_confusion, plot_embedding_map
    from headstart.classify.scoring import predict_blocks

    [proba] = predict_blocks([head], val)
    predicted = np.asarray(head.classes_)[proba.argmax(axis=1)]
    confusion = plot_confusion(val.labels(), predicted, head.classes_, out / "confusion.png")
    # The map draws a sample: read only the sampled rows of train and validation.
    both = ChainedBlocks([train, val])
    count = min(len(both), _MAP_POINTS)
    rows = np.sort(np.random.default_rng(0).choice(len(both), count, replace=False))
    names = both.classes[both.codes[rows]]
    return [confusion, plot_embedding_map(both.rows(rows), names, out / "embedding_map.png")]


@dataclass
class Evaluation:
    metrics: Metrics
    report: str
    missing: int
    unknown: dict[str, int]
    overlap: Overlap = field(default_factory=lambda: Overlap(known=False))


def _embed_for(loaded_fingerprint, sources, cache_dir, runtime: dict, progress: bool) -> Embedded:
    options = options_for_fingerprint(loaded_fingerprint, **runtime)
    return embed_sources(sources, options, cache_dir, progress=progress)


def proba_in_blocks(
    head: Head, data: Embedded, max_memory: int | None = None, block_rows: int | None = None
) -> np.ndarray:
    """``head.predict_proba`` of every image of ``data``, reading their vectors a block at a
    time (the answers are kept: they are the output; the vectors are not). Blocks are sized
    from ``max_memory`` (default: half the free memory) unless ``block_rows`` is given."""
    if data._X is not None:  # already read by someone: no second read
        return head.predict_proba(data.X)
    n, d, k = len(data.keys), int(data.store.dim or 0), len(head.classes_)
    if block_rows is None:
        budget = MemoryBudget.of(max_memory)
        # The answers (n x classes) are the output; a block costs its copies and its scores.
        block_rows = budget.block_rows(4 * n * k, 14 * d + 12 * k, "answering with the head")
    proba = np.empty((len(data.keys), len(head.classes_)), np.float32)
    for start in range(0, len(data.keys), block_rows):
        X = data.store.get(data.keys[start : start + block_rows])
        proba[start : start + len(X)] = head.predict_proba(X)
    return proba


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
    max_memory: int | None = None,
) -> Scored:
    """Load a saved head, embed the labelled sources as it was trained (only what the cache
    lacks) and take its probabilities; ``purpose`` names the command needing the labels."""
    loaded = load_head(head_dir)
    data = _embed_for(loaded.fingerprint, sources, cache_dir, runtime or {}, progress)
    labels = data.require_labels(purpose)
    return Scored(loaded, data, labels, proba_in_blocks(loaded.head, data, max_memory))


def evaluate_head(
    head_dir: str | os.PathLike[str],
    sources: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    runtime: dict | None = None,
    progress: bool = False,
    max_memory: int | None = None,
) -> Evaluation:
    """Metrics and a per-class report of a saved head on labelled sources."""
    scored = score_head(
        head_dir, sources, cache_dir, runtime=runtime, progress=progress, max_memory=max_memory
    )
    data, labels, proba, head = scored.data, scored.labels, scored.proba, scored.loaded.head
    known = set(np.asarray(head.classes_).astype(str))
    unknown = {k: v for k, v in class_counts(labels).items() if k not in known}
    metrics = score(labels, proba, head.classes_, probabilistic=head.probabilistic)
    predicted = np.asarray(head.classes_)[proba.argmax(axis=1)]
    overlap = training_overlap(scored)
    return Evaluation(metrics, per_class_report(labels, predicted), data.missing, unknown, overlap)


def training_overlap(scored: Scored) -> Overlap:
    """Which of the scored images the head was trained on (by content key), and the metrics
    on the others."""
    head = scored.loaded.head
    return split_scores(
        recorded_training_keys(scored.loaded),
        scored.data.keys,
        scored.labels,
        scored.proba,
        head.classes_,
        scored.data.paths,
        probabilistic=head.probabilistic,
    )


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
    max_memory: int | None = None,
) -> Predictions:
    """Every image's probabilities under a saved head, its vectors read a block at a time."""
    loaded: LoadedHead = load_head(head_dir)
    data = _embed_for(loaded.fingerprint, sources, cache_dir, runtime or {}, progress)
    failures = data.summary.failure_examples if data.summary else []
    proba = proba_in_blocks(loaded.head, data, max_memory)
    return Predictions(data.paths, proba, np.asarray(loaded.head.classes_), data.missing, failures)
