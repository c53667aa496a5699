"""Options shared by the commands that embed images: the model, the cache, the device."""

from __future__ import annotations

import dataclasses
import functools

import click

from headstart.classify.settings import TrainOptions
from headstart.device import AUTO, PRECISIONS
from headstart.extract.options import DECODE_PLACES, ExtractOptions
from headstart.extract.samples import SampleFields

__all__ = [
    "CACHE_ENV",
    "CACHE_HELP",
    "DEFAULT_CACHE",
    "DEFAULT_DEVICE",
    "DEVICE_HELP",
    "EXIT_INTERRUPTED",
    "EXIT_SOME_FAILED",
    "default_of",
    "embedding_options",
    "extract_options",
    "memory_option",
    "runtime",
    "runtime_options",
    "take_settings",
    "validation_options",
]

EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130
CACHE_ENV, DEFAULT_CACHE = "HEADSTART_CACHE", ".headstart"
CACHE_HELP = f"Cache directory [env {CACHE_ENV}; default ./{DEFAULT_CACHE}]."
DEFAULT_DEVICE, DEVICE_HELP = AUTO, f"{AUTO}, cpu, cuda or cuda:N."


def default_of(settings: type, name: str) -> object:
    """The default a settings dataclass declares for its field ``name``: an option shows it
    and passes it on, but never restates it."""
    for entry in dataclasses.fields(settings):
        if entry.name == name:
            if entry.default is dataclasses.MISSING:
                raise TypeError(f"{settings.__name__}.{name} has no plain default")
            return entry.default
    raise TypeError(f"{settings.__name__} has no field {name!r}")


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


# Where labels and captions of tar samples, and the columns of tables, are read from: given to
# extract and again, alike, to every command that reads those sources back.
SOURCE_FIELD_OPTIONS = [
    click.option(
        "--label-field",
        metavar="NAME",
        help="Tar shards: take each sample's label from this field of its .json [default: "
        ".cls]; tables: the label column [default: label].",
    ),
    click.option(
        "--caption-field",
        metavar="NAME",
        help="Tar shards: take each sample's caption from this field of its .json [default: "
        ".txt]; tables: the caption column [default: caption].",
    ),
    click.option(
        "--path-field", metavar="NAME", help="Tables: the image path column [default: path]."
    ),
    click.option(
        "--url-field", metavar="NAME", help="Tables: the image URL column [default: url]."
    ),
    click.option("--id-field", metavar="NAME", help="Tables: the row id column [default: id]."),
]


def embedding_options(command):
    """The options that pick a model and run it; shared by every command that embeds images."""
    options = [
        click.option(
            "-m", "--model", required=True, help="resnet50, timm:NAME, model.pt or pkg.mod:factory."
        ),
        click.option(
            "-w",
            "--weights",
            default=default_of(ExtractOptions, "weights"),
            show_default=True,
            help="DEFAULT, a torchvision enum name, none (random init) or a file.",
        ),
        click.option("--layer", help="A graph node to embed at instead of the pre-logits."),
        click.option(
            "--classifier",
            help="Your own network's final classifier module, cut off to embed its input "
            "[default: found; none keeps the output].",
        ),
        click.option(
            "--cache", "cache_dir", envvar=CACHE_ENV, default=DEFAULT_CACHE, help=CACHE_HELP
        ),
        click.option(
            "-b", "--batch-size", type=click.IntRange(min=1), help="[default: 32 CPU, 128 CUDA]"
        ),
        click.option("--device", default=DEFAULT_DEVICE, show_default=True, help=DEVICE_HELP),
        click.option(
            "--precision",
            type=click.Choice([AUTO, *PRECISIONS]),
            default=default_of(ExtractOptions, "precision"),
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
            "--decode",
            type=click.Choice(DECODE_PLACES),
            default=default_of(ExtractOptions, "decode"),
            show_default=True,
            help="Where JPEGs are decoded: on the model's device (nvJPEG on CUDA, in batches) or "
            "by the reading workers; auto: on a GPU that can.",
        ),
        click.option(
            "--compile/--no-compile",
            default=None,
            help="torch.compile the model [default: on CPU when the measured eager rate says "
            "the run is long enough to pay for it].",
        ),
        click.option(
            "--store-dtype",
            type=click.Choice(["float16", "float32"]),
            default=default_of(ExtractOptions, "store_dtype"),
            show_default=True,
            help="On-disk precision (float16 falls back to float32 on overflow).",
        ),
        click.option(
            "--shard-size",
            "shard_rows",
            type=click.IntRange(min=1),
            default=default_of(ExtractOptions, "shard_rows"),
            show_default=True,
            help="Rows per shard file.",
        ),
        click.option(
            "--flush-seconds",
            type=click.FloatRange(min=0),
            default=default_of(ExtractOptions, "flush_seconds"),
            show_default=True,
            help="Publish buffered rows at least this often.",
        ),
        click.option(
            "--fallback-random",
            is_flag=True,
            help="If pretrained weights cannot be had, say so and use random init.",
        ),
        *SOURCE_FIELD_OPTIONS,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def take_settings(params: dict, settings: type, keep: frozenset | set = frozenset()) -> dict:
    """The option values named after fields of the ``settings`` dataclass, out of ``params``
    (unless named in ``keep``: options two settings share). An unset option (None) is left
    out, so the field's own default applies."""
    taken = {}
    for entry in dataclasses.fields(settings):
        if entry.name in params:
            value = params[entry.name] if entry.name in keep else params.pop(entry.name)
            if value is not None:
                taken[entry.name] = value
    return taken


def extract_options(params: dict, **extra):
    """Split :func:`embedding_options` values into ``ExtractOptions`` and the cache directory."""
    from headstart.extract import ExtractOptions, PreprocessOverrides

    preprocess = PreprocessOverrides(
        params.pop("resize"),
        params.pop("crop"),
        params.pop("mean"),
        params.pop("std"),
        params.pop("interpolation"),
    )
    fields = source_fields(params)
    cache_dir = params.pop("cache_dir")
    return ExtractOptions(preprocess=preprocess, fields=fields, **params, **extra), cache_dir


def runtime(
    device: str, batch_size: int | None, workers: int | None, fields: SampleFields | None = None
) -> dict:
    """Options that change how fast images are embedded, never the vectors; and ``fields``,
    how the sources' labels and captions are read."""
    chosen = {"device": device, "batch_size": batch_size, "workers": workers}
    return chosen | ({"fields": fields} if fields is not None else {})


def source_fields(params: dict) -> SampleFields:
    """The :data:`SOURCE_FIELD_OPTIONS` values, out of ``params``."""
    from headstart.extract.samples import SampleFields

    names = ("label_field", "caption_field", "path_field", "url_field", "id_field")
    return SampleFields(*(params.pop(name) for name in names))


def _with_source_fields(command):
    """``command`` called with ``fields`` (a SampleFields) in place of the five field options."""

    @functools.wraps(command)
    def called(*args, **params):
        return command(*args, fields=source_fields(params), **params)

    return called


def runtime_options(command):
    """Device, batch and decoding options for commands that embed like a saved head or index,
    and the fields their sources' labels and captions are read from (passed as ``fields``)."""
    command = _with_source_fields(command)
    options = [
        click.option(
            "--cache", "cache_dir", envvar=CACHE_ENV, default=DEFAULT_CACHE, help=CACHE_HELP
        ),
        click.option("--device", default=DEFAULT_DEVICE, show_default=True, help=DEVICE_HELP),
        click.option("-b", "--batch-size", type=click.IntRange(min=1)),
        click.option("-j", "--workers", type=click.IntRange(min=0), help="Decoding processes."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
        *SOURCE_FIELD_OPTIONS,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def validation_options(command):
    """``--val`` sources or a ``--val-split`` fraction: how a labelled source is validated."""
    options = [
        click.option("--val", "val_sources", multiple=True, help="Labelled validation source(s)."),
        click.option(
            "--val-split",
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
            default=default_of(TrainOptions, "val_split"),
            show_default=True,
            help="Held-out fraction when no --val is given.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _memory_size(ctx: click.Context, param: click.Parameter, text: str | None) -> int | None:
    """Option callback: "8G" -> bytes."""
    from headstart.errors import HeadstartError
    from headstart.sizes import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except HeadstartError as exc:
        raise click.BadParameter(str(exc)) from None


def memory_option(command):
    """``--max-memory SIZE``: what the whole process may hold; work is sized from it."""
    return click.option(
        "--max-memory",
        callback=_memory_size,
        help="Memory the whole process may use, e.g. 8G; blocks are sized from it, and work "
        "that cannot fit is refused before it starts [default: half the free memory].",
    )(command)
