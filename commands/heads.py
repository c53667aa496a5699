"""The heads and neighbors commands of ``headstart``: train, evaluate, predict, index, knn.

They are verbs of the one ``headstart`` group (``cli.py`` adds them); each only parses options,
calls :mod:`headstart.classify.workflow` and prints.
"""

from __future__ import annotations

import json

import click

from headstart.commands.options import (
    EXIT_SOME_FAILED,
    embedding_options,
    extract_options,
    runtime,
    runtime_options,
    validation_options,
)
from headstart.errors import HeadstartError

__all__ = ["evaluate", "predict", "train"]

_HEAD_PARAMS = {
    # CLI option -> the heads it applies to (and their parameter name).
    "C": {"logreg": "C", "linear-svm": "C"},
    "alpha": {"ridge": "alpha"},
    "k": {"knn": "k"},
    "vote": {"knn": "vote"},
    "temperature": {"knn": "temperature", "ncm": "temperature"},
    "hidden": {"mlp": "hidden"},
    "epochs": {"mlp": "epochs"},
}


@click.command()
@click.argument("sources", nargs=-1, required=True)
@embedding_options
@click.option(
    "--head",
    "heads",
    multiple=True,
    default=["logreg"],
    show_default=True,
    help="logreg, linear-svm, ridge, knn, ncm, mlp, or all; repeatable.",
)
@validation_options
@click.option(
    "--sweep",
    is_flag=True,
    help="Tune each head on validation (C, alpha, k, ...), then refit on train+val.",
)
@click.option(
    "--refit/--no-refit",
    default=True,
    show_default=True,
    help="After --sweep, refit the chosen head on train+val (--no-refit keeps validation unseen, "
    "e.g. for fine-tuning from the head next).",
)
@click.option("--C", "C", type=click.FloatRange(min=0, min_open=True), help="logreg/linear-svm.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), help="ridge.")
@click.option("-k", "k", type=click.IntRange(min=1), help="knn neighbors.")
@click.option("--vote", type=click.Choice(["weighted", "majority"]), help="knn vote.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="knn/ncm.")
@click.option("--hidden", type=click.IntRange(min=1), help="mlp hidden units.")
@click.option("--epochs", type=click.IntRange(min=1), help="mlp epochs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Validation split seed.")
@click.option("-o", "--out", default="head", show_default=True, help="Directory for the head.")
@click.option("--plot", is_flag=True, help="Also write confusion.png and embedding_map.png.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(
    sources,
    heads,
    val_sources,
    val_split,
    sweep,
    refit,
    C,
    alpha,
    k,
    vote,
    temperature,
    hidden,
    epochs,
    seed,
    out,
    plot,
    quiet,
    **params,
) -> None:
    """Train a head on the embeddings of labelled SOURCES (extracting what is missing)."""
    from headstart.classify.heads import list_heads
    from headstart.classify.tables import leaderboard_table
    from headstart.classify.workflow import TrainOptions, train_head

    names = list_heads() if "all" in heads else list(dict.fromkeys(heads))
    given = {
        "C": C,
        "alpha": alpha,
        "k": k,
        "vote": vote,
        "temperature": temperature,
        "hidden": hidden,
        "epochs": epochs,
    }
    head_params: dict[str, dict] = {name: {} for name in names}
    for option, value in given.items():
        for name, param in _HEAD_PARAMS[option].items():
            if value is not None and name in head_params:
                head_params[name][param] = value
    if params["device"] != "auto":
        for name in ("logreg", "mlp"):
            if name in head_params:
                head_params[name]["device"] = params["device"]
    embed, cache_dir = extract_options(params)
    options = TrainOptions(
        tuple(names), head_params, tuple(val_sources), val_split, sweep, seed, plot, refit
    )
    result = train_head(sources, embed, cache_dir, options, out, progress=not quiet)
    counts = result.class_counts
    ratio = max(counts.values()) / min(counts.values())
    click.echo(
        f"{sum(counts.values())} labelled images, {len(counts)} classes "
        f"(largest/smallest class {ratio:.1f}x); train {result.n_train}, "
        f"validation {result.n_val}"
    )
    if ratio > 1.5:
        click.echo("class sizes: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    if result.missing:
        click.echo(f"{result.missing} images had no embedding (see headstart info)", err=True)
    click.echo(leaderboard_table(result.rows, result.chosen))
    refit = "; refit on train+validation" if result.refit else ""
    click.echo(
        f"saved {result.chosen.head_name} (validation accuracy "
        f"{result.chosen.metrics.accuracy:.4f}{refit}) to {result.head_dir}"
    )
    for path in result.plots:
        click.echo(f"wrote {path}")


@click.command()
@click.argument("head_dir")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    help="Also write the metrics to this JSON file, for scripts.",
)
@runtime_options
def evaluate(head_dir, sources, json_out, cache_dir, device, batch_size, workers, quiet) -> None:
    """Metrics and a per-class report of the head in HEAD_DIR on labelled SOURCES."""
    from headstart.classify.workflow import evaluate_head

    result = evaluate_head(
        head_dir,
        sources,
        cache_dir,
        runtime=runtime(device, batch_size, workers),
        progress=not quiet,
    )
    m = result.metrics
    loss = f"  log-loss {m.log_loss:.4f}" if m.log_loss is not None else ""
    click.echo(
        f"{m.n} images: accuracy {m.accuracy:.4f}  balanced accuracy "
        f"{m.balanced_accuracy:.4f}  macro-F1 {m.macro_f1:.4f}{loss}"
    )
    click.echo(result.report.rstrip())
    if json_out:
        document = {"head": str(head_dir), "sources": list(sources), **m.as_dict()}
        document["unknown_classes"] = result.unknown
        document["missing"] = result.missing
        try:
            with open(json_out, "w", encoding="utf-8") as stream:
                json.dump(document, stream, indent=2)
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
@runtime_options
def predict(head_dir, sources, top_k, fmt, cache_dir, device, batch_size, workers, quiet) -> None:
    """Classify the images of SOURCES with the head in HEAD_DIR."""
    from headstart.classify.tables import prediction_lines
    from headstart.classify.workflow import predict_with_head

    result = predict_with_head(
        head_dir,
        sources,
        cache_dir,
        runtime=runtime(device, batch_size, workers),
        progress=not quiet,
    )
    for line in prediction_lines(result.paths, result.proba, result.classes, top_k, fmt):
        click.echo(line)
    if result.missing:
        for failure in result.failures:
            click.echo(f"  failed: {failure.path}: {failure.reason}", err=True)
        click.echo(f"{result.missing} images could not be classified", err=True)
        click.get_current_context().exit(EXIT_SOME_FAILED)
