"""timm models (``timm:NAME[.TAG]``), when timm is installed: ``pip install 'headstart[timm]'``.

timm's contract gives the pre-logits vector directly: ``num_classes=0`` removes the classifier
and keeps the pooling. Preprocessing comes from the model's pretrained config.
"""

from __future__ import annotations

import difflib
from functools import partial
from typing import Any

from torch import nn

from headstart.errors import HeadstartError, first_line
from headstart.models.backbones import (
    Backbone,
    BackboneWeights,
    WeightsUnavailable,
    random_weights,
    register_source,
    seeded,
)
from headstart.models.checkpoints import file_weights, is_weights_file
from headstart.models.preprocess import preprocess_from_timm

__all__ = ["TimmSource"]

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


@register_source("timm")
class TimmSource:
    """Any ``timm.list_models()`` architecture, with its default or tagged pretrained weights."""

    def names(self) -> list[str]:
        timm = _import_timm(required=False)
        return [f"timm:{n}" for n in timm.list_models(pretrained=True)] if timm else []

    def resolve(self, name: str, weights: str) -> Backbone:
        timm = _import_timm(required=True)
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise HeadstartError(f"unknown timm model {name!r}{hint}")
        from timm.data import resolve_data_config
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        tagged = f"{name.split('.')[0]}.{cfg.tag}" if cfg is not None and cfg.tag else name
        preprocess = None
        if cfg is not None:
            preprocess = preprocess_from_timm(resolve_data_config({}, pretrained_cfg=cfg.to_dict()))
        build = seeded(partial(timm.create_model, tagged, pretrained=False, num_classes=0))
        if weights.lower() == "none":
            chosen = random_weights(preprocess)
        elif is_weights_file(weights):
            chosen = file_weights(weights, preprocess)
        elif weights.upper() == "DEFAULT":
            if cfg is None or not (cfg.hf_hub_id or cfg.url):
                raise HeadstartError(
                    f"timm model {name!r} has no pretrained weights; use --weights none"
                )
            origin = cfg.hf_hub_id or cfg.url
            chosen = BackboneWeights(
                identity=f"timm:{origin}:{cfg.tag or ''}",
                origin=str(origin),
                preprocess=preprocess,
                ensure_available=partial(_ensure_available, cfg.to_dict()),
            )
            build = partial(_build_pretrained, tagged)
        else:
            raise HeadstartError(
                f"timm weights are chosen by the model tag (timm:{name.split('.')[0]}.TAG); "
                f"--weights takes DEFAULT, none or a file, not {weights!r}"
            )
        return Backbone(
            name=f"timm:{tagged}", weights=chosen, build=build, head_rule="as-is", family="timm"
        )


def classifier_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of a timm model's classifier (left over in full checkpoints)."""
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return [f"{n}." for n in ([names] if isinstance(names, str) else names)]


def _import_timm(required: bool) -> Any:
    try:
        import timm
    except ImportError:
        if required:
            raise HeadstartError("timm models need timm: pip install 'headstart[timm]'") from None
        return None
    return timm


def _unavailable(origin: str, exc: Exception) -> WeightsUnavailable:
    reason = first_line(exc)
    return WeightsUnavailable(
        f"cannot load timm weights {origin} ({reason}); offline, put them in the Hugging Face "
        "cache (HF_HOME) on a connected machine first, or use --weights PATH for a local file, "
        "or --weights none for random initialisation (HF_HUB_OFFLINE=1 skips network retries)"
    )


def _ensure_available(cfg: dict[str, Any]) -> None:
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return  # URL-hosted weights: found or fetched at build time
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_HUB_FILES)
    if any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in filenames):
        return
    last: Exception | None = None
    for filename in filenames:
        try:
            hf_hub_download(hub_id, filename)
            return
        except Exception as exc:  # network, missing entry and offline errors alike
            last = exc
    raise _unavailable(hub_id, last or RuntimeError("no weights file"))


def _build_pretrained(name: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _unavailable(name, exc) from None
