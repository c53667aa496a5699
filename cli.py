"""The ``headstart`` command: one click group of thin verbs over the library.

Heavy imports (torch, h5py) happen inside the commands, so ``headstart --help`` is instant.
User errors become one line on stderr and a non-zero exit; exit status 3 means the run finished
but some files could not be used, 130 that it was interrupted (what was done is kept).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from headstart import __version__
from headstart.errors import HeadstartError

__all__ = ["EXIT_INTERRUPTED", "EXIT_SOME_FAILED", "main"]

EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130
_CACHE_HELP = "Cache directory [env HEADSTART_CACHE; default ./.headstart]."


class _Group(click.Group):
    """Turns the library's user errors into click's one-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HeadstartError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            click.echo(
                "interrupted; everything finished so far is saved, rerun to continue", err=True
            )
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headstart")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def main(verbose: bool) -> None:
    """Transfer learning from the command line: embed images once, reuse the vectors."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # torch.compile's C++ toolchain probe warns about CUDA on every CPU-only machine.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _triple(ctx: click.Context, param: click.Parameter, text: str | None):
    """Option callback: "0.5,0.5,0.5" -> (0.5, 0.5, 0.5)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def embedding_options(command):
    """The options that pick a model and run it; shared by every command that embeds images."""
    options = [
        click.option(
            "-m", "--model", required=True, help="resnet50, timm:NAME, model.pt or pkg.mod:factory."
        ),
        click.option(
            "-w",
            "--weights",
            default="DEFAULT",
            show_default=True,
            help="DEFAULT, a torchvision enum name, none (random init) or a file.",
        ),
        click.option("--layer", help="A graph node to embed at instead of the pre-logits."),
        click.option(
            "--cache", "cache_dir", envvar="HEADSTART_CACHE", default=".headstart", help=_CACHE_HELP
        ),
        click.option(
            "-b", "--batch-size", type=click.IntRange(min=1), help="[default: 32 CPU, 128 CUDA]"
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
        ),
        click.option(
            "--precision",
            type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
            default="auto",
            show_default=True,
        ),
        click.option("-j", "--workers", type=click.IntRange(min=0), help="Decoding processes."),
        click.option("--resize", type=click.IntRange(min=1), help="Shorter side before the crop."),
        click.option("--crop", type=click.IntRange(min=1), help="Centre crop (model input) size."),
        click.option(
            "--mean", callback=_triple, help="Normalisation mean: three comma-separated values."
        ),
        click.option(
            "--std", callback=_triple, help="Normalisation std: three comma-separated values."
        ),
        click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "nearest"])),
        click.option(
            "--compile/--no-compile",
            default=None,
            help="torch.compile the model [default: on CPU for 1000+ images].",
        ),
        click.option(
            "--store-dtype",
            type=click.Choice(["float16", "float32"]),
            default="float16",
            show_default=True,
            help="On-disk precision (float16 falls back to float32 on overflow).",
        ),
        click.option(
            "--shard-size",
            "shard_rows",
            type=click.IntRange(min=1),
            default=4096,
            show_default=True,
            help="Rows per shard file.",
        ),
        click.option(
            "--flush-seconds",
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            help="Publish buffered rows at least this often.",
        ),
        click.option(
            "--fallback-random",
            is_flag=True,
            help="If pretrained weights cannot be had, say so and use random init.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _extract_options(params: dict, **extra):
    """Split :func:`embedding_options` values into ``ExtractOptions`` and the cache directory."""
    from headstart.extract import ExtractOptions, PreprocessOverrides

    preprocess = PreprocessOverrides(
        params.pop("resize"),
        params.pop("crop"),
        params.pop("mean"),
        params.pop("std"),
        params.pop("interpolation"),
    )
    cache_dir = params.pop("cache_dir")
    return ExtractOptions(preprocess=preprocess, **params, **extra), cache_dir


@main.command()
@click.argument("sources", nargs=-1, required=True)
@embedding_options
@click.option("--retry-failed", is_flag=True, help="Try files the failure ledger lists again.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def extract(sources: tuple[str, ...], retry_failed: bool, quiet: bool, **params) -> None:
    """Embed the images of SOURCES (folders, .txt/.csv manifests, files) into the cache."""
    from headstart.extract import extract as run_extract

    options, cache_dir = _extract_options(params, retry_failed=retry_failed)
    # A polite kill (SIGTERM from a scheduler) gets the same clean stop as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run_extract(sources, options, cache_dir, progress=not quiet)
    finally:
        signal.signal(signal.SIGTERM, previous)
    fp = summary.fingerprint
    click.echo(f"fingerprint {fp.id}  {fp.describe()}  (cache {cache_dir})")
    rate = f" · {summary.images_per_second:.1f} img/s" if summary.embedded else ""
    click.echo(
        f"listed {summary.listed} · embedded {summary.embedded} · from cache {summary.from_cache}"
        f" · failed {summary.failed + summary.skipped_failed}{rate} · {summary.seconds:.1f} s"
    )
    failed = summary.failed + summary.skipped_failed
    if failed:
        for failure in summary.failure_examples:
            click.echo(f"  failed: {failure.path}: {failure.reason}", err=True)
        earlier = (
            f" ({summary.skipped_failed} in earlier runs; --retry-failed tries them again)"
            if summary.skipped_failed
            else ""
        )
        click.echo(
            f"{failed} files could not be used{earlier}; "
            f"list them with: headstart info {cache_dir} --failures",
            err=True,
        )
        click.get_current_context().exit(EXIT_SOME_FAILED)


@main.command()
@click.argument("cache_dir", required=False, envvar="HEADSTART_CACHE", default=".headstart")
@click.option("--failures", "show_failures", is_flag=True, help="List every failed file.")
def info(cache_dir: str, show_failures: bool) -> None:
    """Show the fingerprints, counts, widths and sizes in CACHE_DIR, and its failures."""
    from headstart.cache import EmbeddingCache
    from headstart.cache.report import describe_cache

    report = describe_cache(cache_dir)
    click.echo(
        f"cache {report.root}: {report.files_indexed} files indexed, {report.failures} failed"
    )
    for fp in report.fingerprints:
        dtypes = "/".join(fp.dtypes) or "-"
        click.echo(f"{fp.fingerprint.id}  {fp.fingerprint.describe()}")
        click.echo(
            f"    {fp.embeddings} embeddings x {fp.dim or '-'}  {dtypes}  {fp.shards} shards  "
            f"{_size(fp.bytes)}"
        )
    if report.failure_reasons and not show_failures:
        click.echo("failures by reason:")
        for reason, count in report.failure_reasons:
            click.echo(f"    {count:6d}  {reason}")
    if show_failures:
        with EmbeddingCache(cache_dir).catalog() as catalog:
            for failure in catalog.iter_failures():
                click.echo(f"{failure.path}\t{failure.reason}")


@main.command()
@click.argument("cache_dir", required=False, envvar="HEADSTART_CACHE", default=".headstart")
@click.option("--fingerprint", help="Fingerprint id or unique prefix [default: the only one].")
@click.option("-o", "--out", required=True, help="Output path (.npy + .csv, or .parquet).")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet"]), help="[default: by suffix]")
def export(cache_dir: str, fingerprint: str | None, out: str, fmt: str | None) -> None:
    """Write a fingerprint's embeddings with paths and labels to .npy + .csv or Parquet."""
    from headstart.cache import EmbeddingCache
    from headstart.cache.export import export_embeddings

    fmt = fmt or ("parquet" if out.endswith(".parquet") else "npy")
    result = export_embeddings(EmbeddingCache(cache_dir).open(fingerprint), out, fmt)
    click.echo(f"wrote {result.rows} rows x {result.dim} to {', '.join(map(str, result.files))}")


@main.command()
@click.argument("pattern", required=False)
@click.option("--source", type=click.Choice(["torchvision", "timm"]), help="Only this family.")
def models(pattern: str | None, source: str | None) -> None:
    """List model names (optionally matching a glob PATTERN such as 'resnet*')."""
    import fnmatch

    from headstart.extract import list_backbones

    for name in list_backbones(source):
        short = name.split(":", 1)[1] if name.startswith("torchvision:") else name
        if pattern is None or fnmatch.fnmatch(short, pattern) or fnmatch.fnmatch(name, pattern):
            click.echo(short)


@main.command()
@click.argument("model")
def layers(model: str) -> None:
    """List the graph nodes of MODEL that --layer accepts."""
    from headstart.extract import get_backbone
    from headstart.extract.features import layer_names

    for name in layer_names(get_backbone(model, "none")):
        click.echo(name)


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


def _runtime(device: str, batch_size: int | None, workers: int | None) -> dict:
    """Options that change how fast images are embedded, never the vectors."""
    return {"device": device, "batch_size": batch_size, "workers": workers}


def runtime_options(command):
    """Device, batch and decoding options for commands that embed like a saved head or index."""
    options = [
        click.option(
            "--cache", "cache_dir", envvar="HEADSTART_CACHE", default=".headstart", help=_CACHE_HELP
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
        ),
        click.option("-b", "--batch-size", type=click.IntRange(min=1)),
        click.option("-j", "--workers", type=click.IntRange(min=0), help="Decoding processes."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
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
@click.option("--val", "val_sources", multiple=True, help="Labelled validation source(s).")
@click.option(
    "--val-split",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Held-out fraction when no --val is given.",
)
@click.option(
    "--sweep",
    is_flag=True,
    help="Tune each head on validation (C, alpha, k, ...), then refit on train+val.",
)
@click.option("--C", "C", type=click.FloatRange(min=0, min_open=True), help="logreg/linear-svm.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), help="ridge.")
@click.option("-k", "k", type=click.IntRange(min=1), help="knn neighbours.")
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
    embed, cache_dir = _extract_options(params)
    options = TrainOptions(
        tuple(names), head_params, tuple(val_sources), val_split, sweep, seed, plot
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


@main.command()
@click.argument("head_dir")
@click.argument("sources", nargs=-1, required=True)
@runtime_options
def evaluate(head_dir, sources, cache_dir, device, batch_size, workers, quiet) -> None:
    """Metrics and a per-class report of the head in HEAD_DIR on labelled SOURCES."""
    from headstart.classify.workflow import evaluate_head

    result = evaluate_head(
        head_dir,
        sources,
        cache_dir,
        runtime=_runtime(device, batch_size, workers),
        progress=not quiet,
    )
    m = result.metrics
    loss = f"  log-loss {m.log_loss:.4f}" if m.log_loss is not None else ""
    click.echo(
        f"{m.n} images: accuracy {m.accuracy:.4f}  balanced accuracy "
        f"{m.balanced_accuracy:.4f}  macro-F1 {m.macro_f1:.4f}{loss}"
    )
    click.echo(result.report.rstrip())
    if result.unknown:
        unknown = ", ".join(f"{name} ({n})" for name, n in result.unknown.items())
        click.echo(f"classes the head does not know (counted as errors): {unknown}", err=True)
    if result.missing:
        click.echo(f"{result.missing} images had no embedding and were left out", err=True)
        click.get_current_context().exit(EXIT_SOME_FAILED)


@main.command()
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
        runtime=_runtime(device, batch_size, workers),
        progress=not quiet,
    )
    for line in prediction_lines(result.paths, result.proba, result.classes, top_k, fmt):
        click.echo(line)
    if result.missing:
        for failure in result.failures:
            click.echo(f"  failed: {failure.path}: {failure.reason}", err=True)
        click.echo(f"{result.missing} images could not be classified", err=True)
        click.get_current_context().exit(EXIT_SOME_FAILED)


@main.group()
def index() -> None:
    """Nearest-neighbour indexes over embeddings (FAISS)."""


@index.command("build")
@click.argument("sources", nargs=-1, required=True)
@embedding_options
@click.option(
    "--kind",
    type=click.Choice(["auto", "flat", "ivf", "hnsw", "ivfpq"]),
    default="auto",
    show_default=True,
)
@click.option("--max-memory", help="Memory budget for the vectors, e.g. 2G (auto picks PQ).")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True)
@click.option("-o", "--out", default="index", show_default=True, help="Index directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index_build(sources, kind, max_memory, target_recall, out, quiet, **params) -> None:
    """Build a FAISS index over the embeddings of SOURCES."""
    from headstart.classify.index import parse_size
    from headstart.classify.workflow import build_index_from_sources

    embed, cache_dir = _extract_options(params)
    budget = parse_size(max_memory) if max_memory else None
    built = build_index_from_sources(
        sources,
        embed,
        cache_dir,
        out,
        kind=kind,
        max_memory=budget,
        target_recall=target_recall,
        progress=not quiet,
    )
    click.echo(
        f"indexed {built.count} vectors: {built.spec.describe()}, recall@10 "
        f"{built.recall:.3f} against exact search ({built.seconds:.1f} s) -> {out}"
    )


@main.command()
@click.argument("index_dir")
@click.argument("queries", nargs=-1)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--key", "keys", multiple=True, help="A cached content key to query; repeatable.")
@click.option(
    "--duplicates",
    type=click.FloatRange(-1, 1),
    help="List pairs of indexed items at least this similar instead.",
)
@runtime_options
def knn(
    index_dir, queries, k, keys, duplicates, cache_dir, device, batch_size, workers, quiet
) -> None:
    """Nearest neighbours in INDEX_DIR of QUERIES (images, folders) or of --key values."""
    from headstart.classify.index import load_index
    from headstart.classify.tables import neighbour_lines
    from headstart.classify.workflow import query_index

    if duplicates is not None:
        loaded = load_index(index_dir)
        pairs = loaded.near_duplicates(duplicates)
        for i, j, similarity in pairs:
            click.echo(f"{similarity:.4f}\t{loaded.paths[i]}\t{loaded.paths[j]}")
        click.echo(f"{len(pairs)} pairs with similarity >= {duplicates}", err=True)
        return
    _, found = query_index(
        index_dir,
        cache_dir,
        sources=queries,
        keys=keys,
        k=k,
        runtime=_runtime(device, batch_size, workers),
        progress=not quiet,
    )
    for line in neighbour_lines(found):
        click.echo(line)


def _size(num_bytes: float) -> str:
    units = ["B", "KB", "MB", "GB", "TB"]
    while num_bytes >= 1024 and len(units) > 1:
        num_bytes /= 1024
        units.pop(0)
    return f"{num_bytes:.1f} {units[0]}"


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
