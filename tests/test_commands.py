"""The command line declares no default of its own: each option shows and passes on the default
its settings dataclass declares, so the two cannot drift apart."""

from __future__ import annotations

import dataclasses

import click
import pytest

from headstart.classify.settings import TrainOptions
from headstart.cli import main
from headstart.extract.options import ExtractOptions
from headstart.finetune.settings import FinetuneOptions, LoopSettings

# An option whose default means "not given" (None), or that the loop and the embedding each
# choose for themselves, is not a restated default.
_NOT_RESTATED = {"batch_size", "workers", "compile", "layer", "classifier"}


def _defaults(path: tuple[str, ...]) -> dict[str, object]:
    """What the command at ``path`` passes on for each option not given on its command line."""
    command: click.Command = main
    context = click.Context(main)
    for name in path:
        command = command.get_command(context, name)  # type: ignore[attr-defined]
        context = click.Context(command, parent=context)
    given = ["images", "--model", "resnet18"]  # only what the command requires
    return command.make_context(path[-1], given, parent=context.parent).params


@pytest.mark.parametrize(
    ("path", "settings", "compared"),
    [
        (("extract",), ExtractOptions, 10),
        (("train",), ExtractOptions, 8),
        (("train",), TrainOptions, 9),
        (("finetune",), FinetuneOptions, 9),
        (("finetune",), LoopSettings, 9),
        (("index", "build"), ExtractOptions, 8),
    ],
)
def test_option_defaults_are_the_settings_defaults(path, settings, compared) -> None:
    defaults = _defaults(path)
    checked = []
    for field in dataclasses.fields(settings):
        if field.name not in defaults or field.name in _NOT_RESTATED:
            continue
        if field.default is dataclasses.MISSING:  # required, or a factory: nothing restated
            continue
        if settings is LoopSettings and field.name == "precision":
            continue  # the loop runs at the embedding's resolved precision, never its own default
        assert defaults[field.name] == field.default, f"{' '.join(path)}: {field.name}"
        checked.append(field.name)
    assert len(checked) == compared, checked  # a renamed field or option is noticed


def test_freeze_bn_is_the_loop_default_turned_around() -> None:
    assert _defaults(("finetune",))["freeze_bn"] is (not LoopSettings().train_bn)
