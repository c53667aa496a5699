"""The final classifier of a user's own network: finding it, and cutting it off.

A factory (``file.py:factory``) or TorchScript file usually gives the network as it was trained,
classifier included. Its embedding is what goes into that classifier, so headstart looks for it:

1. the last ``nn.Linear`` a trial forward pass applies, when its output is the network's output;
2. else a module with parameters named ``fc``, ``classifier``, ``head`` or ``linear`` whose
   output is the network's output (when the trial pass cannot run: the last one registered);
3. else none: the network's output is the embedding (pooled when it is a feature map).

``--classifier NAME`` names the module instead; ``--classifier none`` keeps the output as it is.
TorchScript graphs cannot be edited, so there only the last module of an ``nn.Sequential`` can
be cut.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from headstart.errors import HeadstartError

__all__ = [
    "CLASSIFIER_NAMES",
    "NO_CLASSIFIER",
    "Cut",
    "cut_classifier",
    "describe_classifier",
    "find_classifier",
]

CLASSIFIER_NAMES = ("fc", "classifier", "head", "linear")
NO_CLASSIFIER = "none"


@dataclass(frozen=True)
class Cut:
    """A network with its classifier replaced, and what that classifier read."""

    model: nn.Module
    name: str
    in_features: int | None


def find_classifier(model: nn.Module, crop_size: int) -> str | None:
    """The name of ``model``'s final classifier module, or None when it has none."""
    if isinstance(model, torch.jit.ScriptModule):
        return _scripted_classifier(model)
    calls = _trial_forward(model, crop_size)
    if calls is None:
        named = [name for name, m in model.named_modules() if _looks_like_classifier(name, m)]
        return named[-1] if named else None
    output, applied = calls
    linears = [(name, out) for name, module, out in applied if isinstance(module, nn.Linear)]
    if linears and linears[-1][1] is output:
        return linears[-1][0]
    for name, module, out in reversed(applied):
        if out is output and _looks_like_classifier(name, module):
            return name
    return None


def cut_classifier(model: nn.Module, name: str, model_name: str) -> Cut:
    """Replace module ``name`` by an identity: the network then answers with what it read."""
    if isinstance(model, torch.jit.ScriptModule):
        return _cut_scripted(model, name, model_name)
    try:
        module = model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; its modules: {_few(names)}"
        raise HeadstartError(
            f"--classifier {name}: {model_name} has no module {name!r}{hint}"
        ) from None
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return Cut(model, name, _in_features(module))


def describe_classifier(model: nn.Module, name: str) -> str:
    """``fc (Linear 128 -> 5)``: a module name with what it maps, for messages."""
    module = model.get_submodule(name)
    if isinstance(module, nn.Linear):
        return f"{name} (Linear {module.in_features} -> {module.out_features})"
    kind = getattr(module, "original_name", None) or type(module).__name__
    return f"{name} ({kind})"


def _trial_forward(model: nn.Module, crop_size: int):
    """Run one small batch through ``model`` recording each module's output, in call order;
    None when the network cannot run on such a batch."""
    applied: list[tuple[str, nn.Module, object]] = []
    hooks = [
        module.register_forward_hook(
            lambda module, _inputs, output, name=name: applied.append((name, module, output))
        )
        for name, module in model.named_modules()
        if name
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            output = model(torch.randn(2, 3, crop_size, crop_size))
    except Exception:  # the user's network: any failure means "cannot tell this way"
        return None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output, applied


def _named_like_classifier(name: str) -> bool:
    return name.rpartition(".")[2] in CLASSIFIER_NAMES


def _looks_like_classifier(name: str, module: nn.Module) -> bool:
    # A classifier a factory already replaced (nn.Identity) has no parameters: not one to cut.
    return _named_like_classifier(name) and any(True for _ in module.parameters())


def _scripted_classifier(model: torch.jit.ScriptModule) -> str | None:
    children = list(model.named_children())
    if getattr(model, "original_name", "") != "Sequential" or not children:
        return None
    name, last = children[-1]
    if getattr(last, "original_name", "") == "Linear" or _named_like_classifier(name):
        return name
    return None


def _cut_scripted(model: torch.jit.ScriptModule, name: str, model_name: str) -> Cut:
    children = list(model.named_children())
    if (
        getattr(model, "original_name", "") != "Sequential"
        or not children
        or children[-1][0] != name
    ):
        raise HeadstartError(
            f"--classifier {name}: {model_name} is TorchScript, whose graph cannot be edited; "
            "only the last module of an nn.Sequential can be cut (export the network without "
            "its classifier, or use --classifier none)"
        )
    body = nn.Sequential(*(child for _, child in children[:-1]))
    return Cut(body, name, _in_features(children[-1][1]))


def _in_features(module: nn.Module) -> int | None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[1])
    return None


def _few(names: list[str], count: int = 6) -> str:
    shown = ", ".join(names[:count])
    return shown + (", ..." if len(names) > count else "")
