"""Where LP-FT starts (stage 1): a linear probe on the frozen, cached embeddings, the head the
user gave, or (``--init zeroshot``) the zero-shot head of the class names; and the checks that
refuse a start that cannot work before anything is embedded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.cache.fingerprint import Fingerprint
from headstart.classify.data import Embedded, embed_sources, train_and_validation
from headstart.classify.heads import Head
from headstart.classify.linear import LogisticRegressionHead
from headstart.classify.metrics import Metrics, score
from headstart.classify.persist import load_head, save_head
from headstart.classify.zeroshot import zeroshot_head
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions
from headstart.finetune.settings import INITS, PROBE, ZEROSHOT, FinetuneOptions

__all__ = ["StartingHead", "check_init", "refuse_without_text", "starting_head"]


def check_init(options: FinetuneOptions) -> None:
    if options.init not in INITS:
        raise HeadstartError(f"--init takes {' or '.join(INITS)}, not {options.init!r}")
    if options.init == "zeroshot" and options.head_dir is not None:
        raise HeadstartError("--head and --init zeroshot both choose the starting head; give one")
    if options.wise and options.init != "zeroshot":
        raise HeadstartError(
            "--wise mixes the fine-tuned model with the zero-shot one it started from: "
            "add --init zeroshot (and an image-text --model open_clip:...)"
        )
    if any(not 0.0 <= alpha <= 1.0 for alpha in options.wise):
        raise HeadstartError(f"--wise coefficients lie in [0, 1], not {list(options.wise)}")


def refuse_without_text(fingerprint: Fingerprint) -> None:
    from headstart.extract.text import why_no_text

    reason = why_no_text(fingerprint)
    if reason is not None:
        raise HeadstartError(f"--init zeroshot needs an image-text model: {reason}")


@dataclass
class StartingHead:
    """Stage 1's outcome: the head stage 2 starts from (a linear probe on frozen embeddings or
    the zero-shot head), its validation metrics, and the split it was scored on."""

    head: Head
    metrics: Metrics
    train: Embedded
    val: Embedded
    train_labels: np.ndarray
    val_labels: np.ndarray
    linear_probe_accuracy: float | None = None  # the logreg probe's, where one was fitted


def starting_head(
    sources: Sequence[str],
    embed: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    options: FinetuneOptions,
    run_dir: Path,
    resume: bool,
    progress: bool,
) -> StartingHead:
    """Stage 1: the linear probe on frozen, cached embeddings (or the head the user gave, or the
    zero-shot head)."""
    data = embed_sources(sources, embed, cache_dir, progress=progress)
    train, val = train_and_validation(
        data,
        options.val_sources,
        options.val_split,
        options.loop.seed,
        embed,
        cache_dir,
        purpose="fine-tuning",
        progress=progress,
    )
    train_labels, val_labels = train.require_labels("training"), val.require_labels("validation")
    if options.init == "zeroshot":
        return _zeroshot_start(
            data.fingerprint, cache_dir, embed, options, run_dir, resume, train, val
        )
    if options.head_dir is not None:
        head = load_head(options.head_dir, fingerprint=data.fingerprint).head
    else:
        head = LogisticRegressionHead(C=options.probe_C).fit(train.X, train_labels)
    metrics = score(val_labels, head.predict_proba(val.X), head.classes_)
    if options.head_dir is None and not resume:
        save_head(
            head,
            run_dir / PROBE,
            fingerprint=data.fingerprint,
            metrics=metrics.as_dict(),
            notes={"stage": "linear probe before fine-tuning"},
        )
    return StartingHead(head, metrics, train, val, train_labels, val_labels, metrics.accuracy)


def _zeroshot_start(
    fingerprint: Fingerprint,
    cache_dir: str | os.PathLike[str],
    embed: ExtractOptions,
    options: FinetuneOptions,
    run_dir: Path,
    resume: bool,
    train: Embedded,
    val: Embedded,
) -> StartingHead:
    """Stage 1 for ``--init zeroshot``: the zero-shot head of every class the sources name
    (through the text cache), and for ``--wise``'s table the logreg probe for reference."""
    train_labels, val_labels = train.require_labels("training"), val.require_labels("validation")
    classes = np.unique(np.concatenate([train_labels, val_labels]).astype(str))
    head = zeroshot_head(classes, fingerprint, cache_dir, options.prompts, device=embed.device)
    metrics = score(val_labels, head.predict_proba(val.X), head.classes_)
    notes = {"stage": "zero-shot head before fine-tuning"}
    if not resume:
        save_head(head, run_dir / ZEROSHOT, fingerprint=fingerprint, metrics=metrics.as_dict(),
                  notes=notes)  # fmt: skip
    probe_accuracy = None
    if options.wise:
        probe = LogisticRegressionHead(C=options.probe_C).fit(train.X, train_labels)
        probe_metrics = score(val_labels, probe.predict_proba(val.X), probe.classes_)
        probe_accuracy = probe_metrics.accuracy
        if not resume:
            save_head(probe, run_dir / PROBE, fingerprint=fingerprint,
                      metrics=probe_metrics.as_dict(),
                      notes={"stage": "linear probe, a reference for --wise"})  # fmt: skip
    return StartingHead(head, metrics, train, val, train_labels, val_labels, probe_accuracy)
