"""``headstart finetune``: linear probe on the cache, then end-to-end fine-tuning (LP-FT).

Stage 1 trains (or loads) a linear head on the cached embeddings; stage 2 reloads the backbone,
starts its classifier from that head and trains end to end. The run directory ends up with:

    config.json       what was asked (a --resume must ask the same)
    probe/            the stage-1 head (frozen embeddings), unless --head was given
    checkpoint.pt     the latest state (resume point); best.pt: the best network state
    metrics.jsonl     one line per epoch (epoch 0: the probe before any fine-tuning)
    learning_curve.png
    backbone.pt       the fine-tuned backbone's state dict: a local weights file for --weights
    head/             the fine-tuned classifier as a saved head, for the fine-tuned embeddings
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from headstart.atomic import atomic_path, write_text_atomic
from headstart.cache.fingerprint import Fingerprint
from headstart.classify.data import Embedded, embed_sources, train_and_validation
from headstart.classify.heads import Head
from headstart.classify.linear import LogisticRegressionHead
from headstart.classify.metrics import Metrics, score
from headstart.classify.persist import load_head, save_head
from headstart.device import resolve_device, resolve_precision
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, PreprocessOverrides, Recipe, resolve_recipe
from headstart.extract.features import build_feature_model
from headstart.finetune.checkpoint import load_state, save_state
from headstart.finetune.data import LabelledImages
from headstart.finetune.loop import BEST, CHECKPOINT, EpochRecord, Trainer
from headstart.finetune.network import (
    ClassifierNetwork,
    UnfreezeSpec,
    apply_unfreeze,
    fold_linear_head,
    parse_unfreeze,
    training_memory_format,
)
from headstart.finetune.settings import CONFIG, CURVE, HEAD, PROBE, FinetuneOptions, LoopSettings

__all__ = ["FinetuneResult", "finetune"]

BACKBONE = "backbone.pt"


@dataclass
class FinetuneResult:
    run_dir: Path
    probe_metrics: Metrics
    best: EpochRecord
    history: list[EpochRecord]
    trainable_blocks: list[str]
    backbone_path: Path
    head_dir: Path
    fingerprint: Fingerprint
    n_train: int
    n_val: int
    resumed_from: tuple[int, int] | None = None


def finetune(
    sources: Sequence[str],
    embed: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    options: FinetuneOptions,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FinetuneResult:
    """Run both stages into ``run_dir`` (see the module docstring for what it holds)."""
    if embed.layer is not None:
        raise HeadstartError("fine-tuning trains the pre-logits embedding; drop --layer")
    unfreeze = parse_unfreeze(options.unfreeze)
    run_dir = Path(run_dir)
    _open_run_dir(run_dir, _config(sources, embed, options), resume)
    probe = _linear_probe(sources, embed, cache_dir, options, run_dir, resume, progress)
    recipe = resolve_recipe(embed)
    loop = dataclasses.replace(
        options.loop, precision=resolve_precision(options.loop.precision, recipe.device)
    )
    network, trainable = _network_from_probe(recipe, probe.head, loop.precision, unfreeze)
    trainer = _trainer(network, probe, recipe, loop, options.augment, run_dir, progress)
    resumed_from = None
    if resume:
        trainer.resume()
        resumed_from = (trainer.state.epoch, trainer.state.step)
    history = trainer.fit(on_epoch)
    published = _publish(network, history, probe, embed, recipe, run_dir)
    best, backbone_path, head_dir, fingerprint = published
    return FinetuneResult(
        run_dir=run_dir,
        probe_metrics=probe.metrics,
        best=best,
        history=history,
        trainable_blocks=trainable,
        backbone_path=backbone_path,
        head_dir=head_dir,
        fingerprint=fingerprint,
        n_train=len(trainer.train_set),
        n_val=len(trainer.val_set),
        resumed_from=resumed_from,
    )


def _open_run_dir(run_dir: Path, config: dict, resume: bool) -> None:
    """A new run writes its config; a resumed one must have the same config."""
    _check_run_dir(run_dir, config, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        _write_json(run_dir / CONFIG, config)


@dataclass
class _Probe:
    """Stage 1's outcome: the linear head on frozen embeddings, and the split it was scored on."""

    head: Head
    metrics: Metrics
    train: Embedded
    val: Embedded
    train_labels: np.ndarray
    val_labels: np.ndarray


def _linear_probe(
    sources: Sequence[str],
    embed: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    options: FinetuneOptions,
    run_dir: Path,
    resume: bool,
    progress: bool,
) -> _Probe:
    """Stage 1: the linear probe on frozen, cached embeddings (or the head the user gave)."""
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
    return _Probe(head, metrics, train, val, train_labels, val_labels)


def _network_from_probe(
    recipe: Recipe, head: Head, precision: str, unfreeze: UnfreezeSpec
) -> tuple[ClassifierNetwork, list[str]]:
    """Stage 2's network: the backbone, unfrozen as asked, with the probe as its classifier."""
    features = build_feature_model(recipe.backbone).module
    network = ClassifierNetwork(
        features,
        fold_linear_head(head),
        recipe.preprocess,
        training_memory_format(recipe.device, precision),
    )
    return network, apply_unfreeze(network, unfreeze)


def _trainer(
    network: ClassifierNetwork,
    probe: _Probe,
    recipe: Recipe,
    loop: LoopSettings,
    augment: str,
    run_dir: Path,
    progress: bool,
) -> Trainer:
    classes = np.asarray(probe.head.classes_).astype(str)
    train_set = LabelledImages(
        probe.train.paths,
        _class_index(probe.train_labels, classes),
        recipe.preprocess,
        augment=augment,
        seed=loop.seed,
    )
    val_set = LabelledImages(
        probe.val.paths,
        _class_index(probe.val_labels, classes),
        recipe.preprocess,
    )
    return Trainer(network, train_set, val_set, loop, run_dir, recipe.device, progress=progress)


def _publish(
    network: ClassifierNetwork,
    history: list[EpochRecord],
    probe: _Probe,
    embed: ExtractOptions,
    recipe: Recipe,
    run_dir: Path,
) -> tuple[EpochRecord, Path, Path, Fingerprint]:
    """The outputs, from the best state (epoch 0, the probe itself, when nothing beat it):
    (best epoch, backbone file, head directory, fingerprint of the fine-tuned embeddings)."""
    network.load_state_dict(load_state(run_dir / BEST))
    best = max(history, key=lambda r: (r.val_accuracy, -r.epoch))
    backbone_path = run_dir / BACKBONE
    save_state(backbone_path, _backbone_state(network))
    fingerprint = _finetuned_fingerprint(embed, recipe.preprocess, backbone_path)
    classes = np.asarray(probe.head.classes_).astype(str)
    head_dir = _save_finetuned_head(network, classes, run_dir / HEAD, fingerprint, best)
    _plot_curve(history, run_dir / CURVE)
    return best, backbone_path, head_dir, fingerprint


def _config(sources: Sequence[str], embed: ExtractOptions, options: FinetuneOptions) -> dict:
    """What decides the result; speed-only settings (workers, device batch split) are left out."""
    device = resolve_device(embed.device)
    loop = dataclasses.asdict(options.loop)
    loop.pop("workers")
    loop.pop("accumulate")
    config = {
        "sources": [os.path.abspath(s) for s in sources],
        "model": embed.model,
        "weights": embed.weights,
        "preprocess": dataclasses.asdict(embed.preprocess),
        "precision": embed.precision,
        # What auto became on this machine: a resume elsewhere must not switch silently.
        "precision_used": {
            "embedding": resolve_precision(embed.precision, device),
            "training": resolve_precision(options.loop.precision, device),
        },
        "val_sources": [os.path.abspath(s) for s in options.val_sources],
        "val_split": options.val_split,
        "head": os.path.abspath(options.head_dir) if options.head_dir else None,
        "probe_C": options.probe_C,
        "unfreeze": options.unfreeze,
        "augment": options.augment,
        "loop": loop,
    }
    return json.loads(json.dumps(config))  # as config.json will read back: tuples as lists


def _check_run_dir(run_dir: Path, config: dict, resume: bool) -> None:
    has_run = (run_dir / CHECKPOINT).is_file()
    if resume:
        if not has_run:
            raise HeadstartError(f"{run_dir} holds no interrupted run to --resume")
        try:
            saved = json.loads((run_dir / CONFIG).read_text())
        except (OSError, json.JSONDecodeError):
            raise HeadstartError(f"{run_dir / CONFIG} is missing or damaged") from None
        # A key an older config.json lacks is not held against it.
        changed = sorted(k for k in config if k in saved and saved[k] != config[k])
        if changed:
            differences = ", ".join(f"{k} (was {saved[k]}, now {config[k]})" for k in changed)
            raise HeadstartError(
                f"--resume needs the options of the interrupted run, on a machine that runs "
                f"them the same way; these differ: {differences} (see {run_dir / CONFIG})"
            )
    elif has_run:
        raise HeadstartError(
            f"{run_dir} already holds a fine-tuning run; add --resume to continue it, "
            "or choose another --out"
        )


def _class_index(labels: np.ndarray, classes: np.ndarray) -> list[int]:
    index = {name: i for i, name in enumerate(classes.tolist())}
    unknown = sorted(set(labels.tolist()) - set(index))
    if unknown:
        raise HeadstartError(
            f"the head knows classes {classes.tolist()}, not {', '.join(unknown[:5])}"
        )
    return [index[label] for label in labels.tolist()]


def _backbone_state(network: ClassifierNetwork) -> dict[str, torch.Tensor]:
    """The backbone's weights under the names the architecture itself uses, so the file loads
    as ``--weights`` (the classifier layer, cut at extraction, is not in it)."""
    body = getattr(network.features, "body", network.features)
    return {name: tensor.detach().cpu().clone() for name, tensor in body.state_dict().items()}


def _finetuned_fingerprint(embed: ExtractOptions, preprocess, backbone_path: Path) -> Fingerprint:
    # The same preprocessing, spelled out: a weights file alone would get the architecture's.
    overrides = PreprocessOverrides(**dataclasses.asdict(preprocess))
    options = dataclasses.replace(
        embed,
        weights=str(backbone_path.resolve()),
        preprocess=overrides,
        fallback_random=False,
    )
    return resolve_recipe(options).fingerprint


def _save_finetuned_head(
    network: ClassifierNetwork,
    classes: np.ndarray,
    directory: Path,
    fingerprint: Fingerprint,
    best: EpochRecord,
) -> Path:
    layer = network.classifier
    arrays = {
        "mean": np.zeros(layer.in_features, np.float32),
        "scale": np.ones(layer.in_features, np.float32),
        "coef": layer.weight.detach().cpu().float().numpy(),
        "intercept": layer.bias.detach().cpu().float().numpy(),
    }
    head = LogisticRegressionHead.from_arrays({}, classes, arrays)
    return save_head(
        head,
        directory,
        fingerprint=fingerprint,
        metrics={"accuracy": best.val_accuracy, "log_loss": best.val_loss, "epoch": best.epoch},
        notes={"stage": "fine-tuned classifier layer", "backbone": BACKBONE},
    )


def _plot_curve(history: list[EpochRecord], path: Path) -> Path:
    from headstart.classify.plots import plot_learning_curve

    with atomic_path(path) as temporary:
        plot_learning_curve([r.as_dict() for r in history], temporary)
    return path


def _write_json(path: Path, document: dict) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
