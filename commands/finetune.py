"""``headstart finetune``: parses options, runs :func:`headstart.finetune.finetune`, prints."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import click

from headstart.commands.options import (
    EXIT_INTERRUPTED,
    default_of,
    embedding_options,
    extract_options,
    take_settings,
    validation_options,
)
from headstart.commands.report import report_hint
from headstart.finetune.settings import INITS, FinetuneOptions, LoopSettings

if TYPE_CHECKING:
    from headstart.finetune import EpochRecord, FinetuneResult

__all__ = ["finetune"]

_loop = functools.partial(default_of, LoopSettings)
_options = functools.partial(default_of, FinetuneOptions)


@click.command("finetune")
@click.argument("sources", nargs=-1, required=True)
@embedding_options
@validation_options
@click.option(
    "--head",
    "head_dir",
    help="A saved linear head to start from [default: train logreg on the cache first].",
)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default=_options("init"),
    show_default=True,
    help="Start the classifier from a logreg probe on the cache, or from the zero-shot head of "
    "the class names (an image-text --model open_clip:...).",
)
@click.option(
    "--prompts",
    default=_options("prompts"),
    show_default=True,
    help="--init zeroshot's prompt templates: openai, simple, or a file of lines with {}.",
)
@click.option(
    "--wise",
    "wise",
    multiple=True,
    metavar="ALPHA[,ALPHA...]",
    help="WiSE-FT (with --init zeroshot): score each mix (1-ALPHA)*zero-shot + ALPHA*fine-tuned "
    "of all weights on validation and publish the best; repeatable.",
)
@click.option(
    "--C",
    "probe_C",
    type=click.FloatRange(min=0, min_open=True),
    default=_options("probe_C"),
    show_default=True,
    help="Inverse L2 strength of the stage-1 logreg probe.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=_loop("epochs"), show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=_loop("lr"),
    show_default=True,
    help="Backbone learning rate (AdamW).",
)
@click.option(
    "--head-lr-mult",
    type=click.FloatRange(min=0),
    default=_loop("head_lr_mult"),
    show_default=True,
    help="Classifier learning rate as a multiple of --lr.",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=_loop("weight_decay"),
    show_default=True,
)
@click.option(
    "--warmup",
    type=click.FloatRange(0, 1),
    default=_loop("warmup"),
    show_default=True,
    help="Fraction of the steps spent warming the learning rate up.",
)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=_loop("label_smoothing"),
    show_default=True,
)
@click.option(
    "--freeze-bn/--train-bn",
    default=not _loop("train_bn"),
    show_default=True,
    help="Keep BatchNorm in inference mode (running statistics fixed).",
)
@click.option(
    "--unfreeze",
    default=_options("unfreeze"),
    show_default=True,
    help="all, none (classifier only) or last:N backbone blocks.",
)
@click.option(
    "--augment",
    type=click.Choice(["none", "standard"]),
    default=_options("augment"),
    show_default=True,
    help="standard: random resized crop and horizontal flip.",
)
@click.option(
    "--accumulate",
    type=click.IntRange(min=1),
    default=_loop("accumulate"),
    show_default=True,
    help="Split each batch into this many passes (gradients add up).",
)
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=_loop("patience"),
    show_default=True,
    help="Stop after this many epochs without a better validation accuracy (0: never).",
)
@click.option("--seed", type=int, default=_loop("seed"), show_default=True)
@click.option(
    "-o", "--out", "run_dir", default="finetune-run", show_default=True, help="Run directory."
)
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def finetune(
    ctx: click.Context, sources, run_dir: str, resume: bool, quiet: bool, **params
) -> None:
    """Fine-tune the backbone end to end on labelled SOURCES, starting from a linear probe
    trained on their cached embeddings (LP-FT)."""
    from headstart.finetune import TrainingInterrupted
    from headstart.finetune import finetune as run_finetune

    # Options are named after the settings fields they set. -b and -j, unset, leave the loop its
    # own batch size and decoding processes; -j also sets the embedding's, and the loop trains
    # at the embedding's precision.
    from headstart.finetune.wise import parse_alphas

    freeze_bn = params.pop("freeze_bn")
    params["wise"] = parse_alphas(params["wise"])
    loop = LoopSettings(
        train_bn=not freeze_bn, **take_settings(params, LoopSettings, keep={"precision", "workers"})
    )
    options = FinetuneOptions(loop=loop, **take_settings(params, FinetuneOptions))
    embed, cache_dir = extract_options(params)
    try:
        result = run_finetune(
            sources,
            embed,
            cache_dir,
            options,
            run_dir,
            resume=resume,
            progress=not quiet,
            on_epoch=functools.partial(_print_epoch, _START_NAMES[options.init]),
        )
    except TrainingInterrupted as stop:
        click.echo(
            f"interrupted in epoch {stop.epoch + 1} after step {stop.step}; the state is saved "
            f"in {run_dir}; continue with the same command and --resume",
            err=True,
        )
        ctx.exit(EXIT_INTERRUPTED)
    _print_result(result, embed.model)
    if result.wise is not None:
        _print_wise(result)
    click.echo(report_hint(str(result.run_dir), options.val_sources, cache_dir))


_START_NAMES = {"probe": "linear probe", "zeroshot": "zero-shot head"}


def _print_epoch(start: str, record: EpochRecord) -> None:
    if record.epoch == 0:
        click.echo(
            f"epoch 0 ({start}): validation accuracy {record.val_accuracy:.4f}, "
            f"loss {record.val_loss:.4f}"
        )
        return
    click.echo(
        f"epoch {record.epoch}: train loss {record.train_loss:.4f}, validation accuracy "
        f"{record.val_accuracy:.4f}, loss {record.val_loss:.4f}, "
        f"{record.images_per_second:.1f} images/s"
    )


def _print_result(result: FinetuneResult, model: str) -> None:
    if result.resumed_from is not None:
        epoch, step = result.resumed_from
        click.echo(f"resumed after epoch {epoch}, step {step}")
    trainable = ", ".join(result.trainable_blocks) or "none"
    click.echo(
        f"{result.n_train} training and {result.n_val} validation images; "
        f"trainable blocks: {trainable}"
    )
    best = result.best
    click.echo(
        f"best: epoch {best.epoch}, validation accuracy {best.val_accuracy:.4f} "
        f"({_START_NAMES[result.init]} {result.probe_metrics.accuracy:.4f})"
    )
    click.echo(
        f"wrote {result.backbone_path} and {result.head_dir} (embeddings {result.fingerprint.id})"
    )
    click.echo(f"use it: headstart extract SOURCE --model {model} --weights {result.backbone_path}")


def _print_wise(result: FinetuneResult) -> None:
    """Validation accuracy of each WiSE mix, beside zero-shot, the linear probe and fine-tune."""
    rows = [("zero-shot (alpha 0)", result.probe_metrics.accuracy)]
    if result.linear_probe_accuracy is not None:
        rows.append(("linear probe, frozen embeddings", result.linear_probe_accuracy))
    final = result.wise_finetuned
    rows.append((f"fine-tuned (alpha 1, epoch {final.epoch})", final.val_accuracy))
    for mix in result.wise:
        chosen = "  <- published" if mix.alpha == result.wise_alpha else ""
        rows.append((f"WiSE alpha {mix.alpha:g}", mix.record.val_accuracy, chosen))
    width = max(len(row[0]) for row in rows)
    click.echo(f"{'model':<{width}}  validation accuracy")
    for name, accuracy, *note in rows:
        click.echo(f"{name:<{width}}  {accuracy:.4f}{''.join(note)}")
