"""``headstart finetune``: linear probe on the cache, then end-to-end fine-tuning (LP-FT).

Stage 1 trains (or loads) a linear head on the cached embeddings, or (``init="zeroshot"``)
builds the zero-shot head from the class names; stage 2 reloads the backbone, starts its
classifier from that head and trains end to end. With ``wise`` alphas, the weight-space mixes of
the zero-shot and the fine-tuned model are scored and the best one is published
(:mod:`headstart.finetune.wise`). The run directory ends up with:

    config.json       what was asked (a --resume must ask the same)
    probe/            the stage-1 head (frozen embeddings), unless --head was given; with
                      --init zeroshot only for --wise, as the table's linear-probe reference
    zeroshot/         --init zeroshot: the zero-shot head the network starts from
    wise.json         --wise: validation metrics of every mix, and the alpha published
    checkpoint.pt     the latest state (resume point); best.pt: the best network state
    metrics.jsonl     one line per epoch (epoch 0: the probe before any fine-tuning)
    learning_curve.png
    backbone.pt       the fine-tuned backbone's state dict: a local weights file for --weights
    head/             the fine-tuned classifier as a saved head, for the fine-tuned embeddings
                      (a zeroshot-format head, on normalised embeddings, for --init zeroshot)
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
from headstart.classify.heads import Head
from headstart.classify.linear import LogisticRegressionHead
from headstart.classify.metrics import Metrics
from headstart.classify.persist import save_head
from headstart.classify.zeroshot import ZeroShotHead
from headstart.device import resolve_device, resolve_precision
from headstart.errors import HeadstartError
from headstart.extract import ExtractOptions, PreprocessOverrides, Recipe, resolve_recipe
from headstart.finetune.checkpoint import load_state, save_state
from headstart.finetune.data import LabelledImages
from headstart.finetune.loop import BEST, CHECKPOINT, EpochRecord, Trainer
from headstart.finetune.network import (
    ClassifierNetwork,
    NormalizedLinear,
    UnfreezeSpec,
    apply_unfreeze,
    fold_linear_head,
    normalized_linear_head,
    parse_unfreeze,
    training_memory_format,
)
from headstart.finetune.settings import (
    CONFIG,
    CURVE,
    HEAD,
    WISE,
    FinetuneOptions,
    LoopSettings,
)
from headstart.finetune.start import (
    StartingHead,
    check_init,
    refuse_without_text,
    starting_head,
)
from headstart.finetune.wise import MixRecord, best_mix, mix_states, score_mixes, wise_document
from headstart.models.features import build_feature_model

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
    init: str = "probe"
    linear_probe_accuracy: float | None = None  # the logreg probe, when it was fitted
    wise: list[MixRecord] | None = None  # --wise: every mix's validation metrics
    wise_finetuned: EpochRecord | None = None  # --wise: the last epoch, the mixes' alpha-1 end
    wise_alpha: float | None = None  # the mix published


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
    check_init(options)
    unfreeze = parse_unfreeze(options.unfreeze)
    run_dir = Path(run_dir)
    recipe = resolve_recipe(embed)
    if options.init == "zeroshot":
        refuse_without_text(recipe.fingerprint)
    _open_run_dir(run_dir, _config(sources, embed, options), resume)
    probe = starting_head(sources, embed, cache_dir, options, run_dir, resume, progress)
    loop = dataclasses.replace(
        options.loop, precision=resolve_precision(options.loop.precision, recipe.device)
    )
    network, trainable = _network_from_probe(recipe, probe.head, loop.precision, unfreeze)
    # WiSE's zero-shot end: the network as built (the original tower, the zero-shot head).
    start_state = _cpu_state(network) if options.wise else None
    trainer = _trainer(network, probe, recipe, loop, options.augment, run_dir, progress)
    resumed_from = None
    if resume:
        trainer.resume()
        resumed_from = (trainer.state.epoch, trainer.state.step)
    history = trainer.fit(on_epoch)
    best = max(history, key=lambda r: (r.val_accuracy, -r.epoch))
    state, published_record, mixes, chosen = None, best, None, None
    if start_state is not None:
        # WiSE's fine-tuned end is where training ended (as in the paper), not the best epoch,
        # which may be epoch 0 itself; its metrics are the last epoch's.
        final, last = _cpu_state(network), history[-1]
        mixes = score_mixes(
            trainer, start_state, final, options.wise, zeroshot_record=history[0],
            finetuned_record=last,
        )  # fmt: skip
        chosen = best_mix(mixes)
        document = wise_document(
            mixes, chosen, zeroshot=history[0], finetuned=last,
            linear_probe=probe.linear_probe_accuracy,
        )  # fmt: skip
        _write_json(run_dir / WISE, document)
        state = mix_states(start_state, final, chosen.alpha)
        published_record = dataclasses.replace(chosen.record, epoch=last.epoch)
    else:
        state = load_state(run_dir / BEST)
    published = _publish(
        network, state, published_record, history, probe, embed, recipe, run_dir, chosen
    )
    backbone_path, head_dir, fingerprint = published
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
        init=options.init,
        linear_probe_accuracy=probe.linear_probe_accuracy,
        wise=mixes,
        wise_finetuned=history[-1] if mixes is not None else None,
        wise_alpha=None if chosen is None else chosen.alpha,
    )


def _cpu_state(network: ClassifierNetwork) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().clone() for name, t in network.state_dict().items()}


def _open_run_dir(run_dir: Path, config: dict, resume: bool) -> None:
    """A new run writes its config; a resumed one must have the same config."""
    _check_run_dir(run_dir, config, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        _write_json(run_dir / CONFIG, config)


def _network_from_probe(
    recipe: Recipe, head: Head, precision: str, unfreeze: UnfreezeSpec
) -> tuple[ClassifierNetwork, list[str]]:
    """Stage 2's network: the backbone, unfrozen as asked, with the probe as its classifier."""
    features = build_feature_model(recipe.backbone, recipe.layer).module
    is_zeroshot = isinstance(head, ZeroShotHead)
    network = ClassifierNetwork(
        features,
        normalized_linear_head(head) if is_zeroshot else fold_linear_head(head),
        recipe.preprocess,
        training_memory_format(recipe.device, precision),
    )
    return network, apply_unfreeze(network, unfreeze)


def _trainer(
    network: ClassifierNetwork,
    probe: StartingHead,
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
    state: dict[str, torch.Tensor],
    record: EpochRecord,
    history: list[EpochRecord],
    probe: StartingHead,
    embed: ExtractOptions,
    recipe: Recipe,
    run_dir: Path,
    mix: MixRecord | None,
) -> tuple[Path, Path, Fingerprint]:
    """The outputs, from ``state`` (the best epoch's, epoch 0 when nothing beat the probe; or
    the chosen WiSE mix) scored as ``record``: (backbone file, head directory, fingerprint of
    the fine-tuned embeddings)."""
    network.load_state_dict(state)
    backbone_path = run_dir / BACKBONE
    save_state(backbone_path, _backbone_state(network))
    fingerprint = _finetuned_fingerprint(embed, recipe.preprocess, backbone_path)
    classes = np.asarray(probe.head.classes_).astype(str)
    head_dir = _save_finetuned_head(
        network, classes, run_dir / HEAD, fingerprint, record, probe.head, mix
    )
    _plot_curve(history, run_dir / CURVE)
    return backbone_path, head_dir, fingerprint


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
        "init": options.init,
        "prompts": options.prompts if options.init == "zeroshot" else None,
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
    start: Head,
    mix: MixRecord | None,
) -> Path:
    """The network's classifier as a saved head: a logreg head without standardisation, or,
    for a :class:`NormalizedLinear` (``--init zeroshot``), a zeroshot-format head (the same
    maths on normalised embeddings)."""
    layer = network.classifier
    coef = layer.weight.detach().cpu().float().numpy()
    intercept = layer.bias.detach().cpu().float().numpy()
    notes = {"stage": "fine-tuned classifier layer", "backbone": BACKBONE}
    metrics = {"accuracy": best.val_accuracy, "log_loss": best.val_loss, "epoch": best.epoch}
    if isinstance(layer, NormalizedLinear):
        params = {"prompts": getattr(start, "prompts", "openai")}
        head = ZeroShotHead.from_arrays(params, classes, {"coef": coef, "intercept": intercept})
        notes["stage"] = "fine-tuned from the zero-shot head"
    else:
        arrays = {
            "mean": np.zeros(layer.in_features, np.float32),
            "scale": np.ones(layer.in_features, np.float32),
            "coef": coef,
            "intercept": intercept,
        }
        head = LogisticRegressionHead.from_arrays({}, classes, arrays)
    if mix is not None:
        notes["stage"] = f"WiSE-FT mix, alpha {mix.alpha:g} (0: zero-shot, 1: fine-tuned)"
        metrics["wise_alpha"] = mix.alpha
    return save_head(head, directory, fingerprint=fingerprint, metrics=metrics, notes=notes)


def _plot_curve(history: list[EpochRecord], path: Path) -> Path:
    from headstart.classify.plots import plot_learning_curve

    with atomic_path(path) as temporary:
        plot_learning_curve([r.as_dict() for r in history], temporary)
    return path


def _write_json(path: Path, document: dict) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
