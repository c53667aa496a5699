"""Commands that describe backbones: models, layers."""

from __future__ import annotations

import click

__all__ = ["layers", "models"]


@click.command()
@click.argument("pattern", required=False)
@click.option(
    "--source", type=click.Choice(["torchvision", "timm", "open_clip"]), help="Only this family."
)
def models(pattern: str | None, source: str | None) -> None:
    """List model names (optionally matching a glob PATTERN such as 'resnet*')."""
    import fnmatch

    from headstart.models import list_backbones

    for name in list_backbones(source):
        short = name.split(":", 1)[1] if name.startswith("torchvision:") else name
        if pattern is None or fnmatch.fnmatch(short, pattern) or fnmatch.fnmatch(name, pattern):
            click.echo(short)


@click.command()
@click.argument("model")
@click.option("--classifier", help="Your own network's classifier module (none: keep output).")
@click.option(
    "--crop",
    type=click.IntRange(min=1),
    help="Input size of the trial pass that finds your own network's classifier.",
)
def layers(model: str, classifier: str | None, crop: int | None) -> None:
    """List the graph nodes of MODEL that --layer accepts, then (on stderr) which module is
    cut off as its classifier to reach the default embedding."""
    from headstart.models import get_backbone
    from headstart.models.features import classifier_summary, layer_names

    backbone = get_backbone(model, "none")
    for name in layer_names(backbone):
        click.echo(name)
    click.echo(classifier_summary(backbone, classifier, crop), err=True)
