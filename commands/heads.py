"""The heads and neighbors commands of ``headstart``: train, evaluate, predict, index, knn.

They are verbs of the one ``headstart`` group (``cli.py`` adds them); each only parses options,
calls :mod:`headstart.classify.workflow` and prints.
"""

from __future__ import annotations

import json

import click

from headstart.atomic import write_text_atomic
from headstart.classify.settings import TrainOptions
from headstart.commands.options import (
    DEFAULT_DEVICE,
    EXIT_SOME_FAILED,
    default_of,
    embedding_options,
    extract_options,
    memory_option,
    runtime,
    runtime_options,
    take_settings,
    validation_options,
)
from headstart.commands.report import report_hint
from headstart.errors import HeadstartError

__all__ = ["evaluate", "predict", "train"]


class _HeadsCommand(click.Command):
    """A command whose head options come from the head registry: one per parameter the heads
    declare, with the heads it applies to in its help. The registry is read when the command is
    parsed or its help shown, so other verbs never import the heads (torch, scikit-learn)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._registry_read = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._registry_read:
            self._registry_read = True
            before = next(i for i, p in enumerate(self.params) if p.name == "seed")
            self.params[before:before] = _registry_options({p.name for p in self.params})
        return super().get_params(ctx)


def _registry_options(taken: set[str]) -> list[click.Option]:
    from headstart.classify.heads import head_options, list_heads

    options = [
        click.Option(
            ["--head", "heads"],
            multiple=True,
            default=default_of(TrainOptions, "heads"),
            show_default=True,
            help=f"{', '.join(list_heads())}, or all; repeatable.",
        )
    ]
    for option, takers in head_options():
        if option.param in taken:
            raise TypeError(f"head parameter {option.param!r} clashes with an option of train")
        options.append(
            click.Option(
                [option.spelling, option.param],
                type=_click_type(option),
                help=f"{option.help} [{'/'.join(takers)}]",
            )
        )
    return options


def _click_type(option) -> click.ParamType:
    if option.choices:
        return click.Choice(option.choices)
    bounds = {"min": option.minimum, "min_open": option.above_minimum}
    if option.kind is int:
        return click.IntRange(**bounds)
    if option.kind is float:
        return click.FloatRange(**bounds)
    return click.STRING


def _class_names(ctx: click.Context, param: click.Parameter, text: str | None):
    """Option callback: "a,b,c", or a file with one class name a line -> a tuple of names."""
    from pathlib import Path

    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {text}: {exc}") from None
    else:
        lines = text.split(",")
    names = tuple(dict.fromkeys(name.strip() for name in lines if name.strip()))
    if len(names) < 2:
        raise click.BadParameter(f"give at least two class names, not {text!r}")
    return names


@click.command(cls=_HeadsCommand)
@click.argument("sources", nargs=-1)
@embedding_options
@validation_options
@click.option(
    "--classes",
    callback=_class_names,
    help="Class names for --head zeroshot: a,b,c or a file with one a line [default: the labels "
    "of SOURCES]; then SOURCES may be unlabelled or left out.",
)
@click.option(
    "--sweep",
    is_flag=True,
    help="Tune each head on validation (C, alpha, k, ...), then refit on train+val.",
)
@click.option(
    "--refit/--no-refit",
    default=default_of(TrainOptions, "refit"),
    show_default=True,
    help="After --sweep, refit the chosen head on train+val (--no-refit keeps validation unseen, "
    "e.g. for fine-tuning from the head next).",
)
@click.option(
    "--seed",
    type=int,
    default=default_of(TrainOptions, "seed"),
    show_default=True,
    help="Validation split seed.",
)
@click.option("-o", "--out", default="head", show_default=True, help="Directory for the head.")
@click.option("--plot", is_flag=True, help="Also write confusion.png and embedding_map.png.")
@memory_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(sources, heads, out: str, quiet: bool, **params) -> None:
    """Train a head on the embeddings of labelled SOURCES (extracting what is missing).

    --head zeroshot builds one from the class names with an image-text model's text tower
    (--model open_clip:...): SOURCES' labels, or --classes without any images.
    """
    from headstart.classify.budget import return_freed_blocks
    from headstart.classify.heads import get_head, head_options, list_heads
    from headstart.classify.tables import leaderboard_table
    from headstart.classify.workflow import train_head

    return_freed_blocks()  # this process streams blocks within a budget: keep it at one block

    names = list_heads() if "all" in heads else list(dict.fromkeys(heads))
    given = {option.param: params.pop(option.param) for option, _ in head_options()}
    head_params: dict[str, dict] = {}
    for name in names:
        head = get_head(name)
        chosen = {p: v for p, v in given.items() if v is not None and head.accepts(p)}
        if params["device"] != DEFAULT_DEVICE and head.accepts("device"):
            chosen["device"] = params["device"]
        head_params[name] = chosen
    # The other options are named after the TrainOptions fields they set.
    options = TrainOptions(
        heads=tuple(names), params=head_params, **take_settings(params, TrainOptions)
    )
    embed, cache_dir = extract_options(params)
    result = train_head(sources, embed, cache_dir, options, out, progress=not quiet)
    counts = result.class_counts
    if counts:
        ratio = max(counts.values()) / min(counts.values())
        click.echo(
            f"{sum(counts.values())} labelled images, {len(counts)} classes "
            f"(largest/smallest class {ratio:.1f}x); train {result.n_train}, "
            f"validation {result.n_val}"
        )
        if ratio > 1.5:
            click.echo("class sizes: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    else:  # zeroshot from --classes: no training images
        validation = f"validation {result.n_val}" if result.n_val else "no validation (give --val)"
        click.echo(f"{len(result.head.classes_)} classes from --classes, no images; {validation}")
    if result.missing:
        click.echo(f"{result.missing} images had no embedding (see headstart info)", err=True)
    if result.chosen is None:
        click.echo(f"saved zeroshot (no validation metrics) to {result.head_dir}")
    else:
        click.echo(leaderboard_table(result.rows, result.chosen))
        for name, reason in result.left_out.items():
            click.echo(f"{name} left out: {reason}")
        refit = "; refit on train+validation" if result.refit else ""
        click.echo(
            f"saved {result.chosen.head_name} (validation accuracy "
            f"{result.chosen.metrics.accuracy:.4f}{refit}) to {result.head_dir}"
        )
    for path in result.plots:
        click.echo(f"wrote {path}")
    if options.plot:
        # Validation a refit has trained on is no test: the user then names held-out images.
        held_out = () if result.refit else options.val_sources
        click.echo(report_hint(str(result.head_dir), held_out, cache_dir))


@click.command()
@click.argument("head_dir")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    help="Also write the metrics to this JSON file, for scripts.",
)
@memory_option
@runtime_options
def evaluate(
    head_dir, sources, json_out, max_memory, cache_dir, device, batch_size, workers, quiet, fields
) -> None:
    """Metrics and a per-class report of the head in HEAD_DIR on labelled SOURCES."""
    from headstart.classify.budget import return_freed_blocks
    from headstart.classify.workflow import evaluate_head

    return_freed_blocks()
    result = evaluate_head(
        head_dir,
        sources,
        cache_dir,
        runtime=runtime(device, batch_size, workers, fields),
        progress=not quiet,
        max_memory=max_memory,
    )
    m = result.metrics
    loss = f"  log-loss {m.log_loss:.4f}" if m.log_loss is not None else ""
    click.echo(
        f"{m.n} images: accuracy {m.accuracy:.4f}  balanced accuracy "
        f"{m.balanced_accuracy:.4f}  macro-F1 {m.macro_f1:.4f}{loss}"
    )
    overlap = result.overlap
    # A leak changes what the figures above mean: said before the per-class table.
    click.echo(("warning: " if overlap.matched else "") + overlap.sentence())
    click.echo(result.report.rstrip())
    if json_out:
        document = {"head": str(head_dir), "sources": list(sources), **m.as_dict()}
        document["training_overlap"] = overlap.as_dict()
        document["unknown_classes"] = result.unknown
        document["missing"] = result.missing
        try:
            write_text_atomic(json_out, json.dumps(document, indent=2))
        except OSError as exc:
            raise HeadstartError(f"cannot write {json_out}: {exc.strerror or exc}") from None
    if result.unknown:
        unknown = ", ".join(f"{name} ({n})" for name, n in result.unknown.items())
        click.echo(f"classes the head does not know (counted as errors): {unknown}", err=True)
    if result.missing:
        click.echo(f"{result.missing} images had no embedding and were left out", err=True)
        click.get_current_context().exit(EXIT_SOME_FAILED)


@click.command()
@click.argument("head_dir")
@click.argument("sources", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "jsonl"]),
    default="table",
    show_default=True,
)
@memory_option
@runtime_options
def predict(
    head_dir, sources, top_k, fmt, max_memory, cache_dir, device, batch_size, workers, quiet, fields
) -> None:
    """Classify the images of SOURCES with the head in HEAD_DIR."""
    from headstart.classify.budget import return_freed_blocks
    from headstart.classify.tables import prediction_lines
    from headstart.classify.workflow import predict_with_head

    return_freed_blocks()
    result = predict_with_head(
        head_dir,
        sources,
        cache_dir,
        runtime=runtime(device, batch_size, workers, fields),
        progress=not quiet,
        max_memory=max_memory,
    )
    for line in prediction_lines(result.paths, result.proba, result.classes, top_k, fmt):
        click.echo(line)
    if result.missing:
        for failure in result.failures:
            click.echo(f"  failed: {failure.path}: {failure.reason}", err=True)
        click.echo(f"{result.missing} images could not be classified", err=True)
        click.get_current_context().exit(EXIT_SOME_FAILED)
