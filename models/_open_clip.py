"""open_clip image-text models (``open_clip:ARCH[/PRETRAINED]``), when open_clip is installed:
``pip install 'headstart[clip]'``.

The image tower is the backbone. Its embedding is the model's image feature as
``encode_image`` gives it: projected into the image-text space, not normalised (indexes and
heads normalise for themselves). Preprocessing comes from the architecture's config and the
pretrained tag's config, as open_clip's ``create_model`` resolves it. ``--weights`` takes
``DEFAULT`` (the tag's weights, from the Hugging Face hub or its cache), ``none`` (a fixed
random initialisation) or a local file holding the state dict of the whole image-text model.
:func:`image_text_model` builds that whole model, for the text side (:mod:`.text`).

Example:
    >>> backbone = get_backbone("open_clip:ViT-B-32/laion2b_s34b_b79k")  # doctest: +SKIP
    >>> backbone.weights.preprocess.interpolation, backbone.weights.preprocess.crop_size
    ('bicubic', 224)
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
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
from headstart.models.checkpoints import file_weights, is_weights_file, load_checkpoint
from headstart.models.preprocess import Preprocess

__all__ = [
    "ImageTower",
    "OpenClipSource",
    "image_text_model",
    "split_name",
    "text_prefixes",
    "tokenizer_for",
]

PREFIX = "open_clip"


@register_source(PREFIX)
class OpenClipSource:
    """Every ``open_clip.list_models()`` architecture, bare or with a pretrained tag."""

    def names(self) -> list[str]:
        open_clip = _import_open_clip(required=False)
        if open_clip is None:
            return []
        tags: dict[str, list[str]] = {}
        for arch, tag in open_clip.list_pretrained():
            tags.setdefault(arch, []).append(tag)
        archs = [*open_clip.list_models(), *(a for a in tags if a not in open_clip.list_models())]
        return [
            f"{PREFIX}:{name}"
            for arch in archs
            for name in (arch, *(f"{arch}/{tag}" for tag in tags.get(arch, ())))
        ]

    def resolve(self, name: str, weights: str) -> Backbone:
        open_clip = _import_open_clip(required=True)
        arch, tag = _parse(name)
        config = open_clip.get_model_config(arch)
        if config is None:
            close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise HeadstartError(
                f"unknown open_clip model {arch!r}; {hint}`headstart models 'open_clip:*'` "
                "lists them"
            )
        if tag is None and weights.upper() == "DEFAULT":
            tag = _default_tag(open_clip, arch)
        tag_cfg = _tag_config(open_clip, arch, tag) if tag else {}
        if tag:
            tag = _canonical_tag(open_clip, arch, tag)
        preprocess = _preprocess(config, tag_cfg)
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        tower = partial(_image_tower, arch, tag, quick_gelu)
        build = seeded(partial(tower, pretrained=False))
        if weights.lower() == "none":
            chosen = random_weights(preprocess)
        elif is_weights_file(weights):
            chosen = file_weights(weights, preprocess)
        elif weights.upper() == "DEFAULT":
            origin = tag_cfg.get("hf_hub") or tag_cfg.get("url") or tag
            chosen = BackboneWeights(
                identity=f"{PREFIX}:{arch}/{tag}:{origin}",
                origin=str(origin),
                preprocess=preprocess,
                ensure_available=partial(_ensure_available, arch, tag),
            )
            build = partial(tower, pretrained=True)
        else:
            raise HeadstartError(
                f"open_clip weights are chosen by the pretrained tag (open_clip:{arch}/TAG); "
                f"--weights takes DEFAULT, none or a file, not {weights!r}"
            )
        return Backbone(
            name=f"{PREFIX}:{arch}/{tag}" if tag else f"{PREFIX}:{arch}",
            weights=chosen,
            build=build,
            head_rule="as-is",
            family=PREFIX,
            # The architecture's config decides the network: a changed config is another model.
            code_identity=f"config-sha256:{_config_digest(config)}",
        )


class ImageTower(nn.Module):
    """The image tower of an open_clip model; ``forward`` is ``encode_image(images)`` without
    normalising (what CLIP's ``encode_image`` computes, CoCa's first output).

    It holds ``visual`` under the name the whole model gives it, so its state dict is that
    part of the whole model's. ``num_features`` is the width of the image-text space.
    """

    def __init__(self, model: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.visual = model.visual
        self.num_features = int(embed_dim)
        self.leftover_prefixes = text_prefixes(model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.visual(images)
        return features[0] if isinstance(features, (tuple, list)) else features


def text_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of everything in a whole open_clip model but its image tower (the
    text tower, the logit scale): what a whole-model checkpoint holds beyond the backbone."""
    if isinstance(model, ImageTower):
        return model.leftover_prefixes
    names = {key.split(".")[0] for key in model.state_dict() if not key.startswith("visual.")}
    children = {name for name, _ in model.named_children()}
    return tuple(sorted(f"{n}." if n in children else n for n in names))


def split_name(name: str) -> tuple[str, str | None]:
    """``open_clip:ARCH[/TAG]`` (a backbone's canonical name) -> (ARCH, TAG or None)."""
    return _parse(name.removeprefix(f"{PREFIX}:"))


def image_text_model(backbone: Backbone) -> nn.Module:
    """The whole image-text model ``backbone`` is the image tower of, with the same weights
    (a weights file must then hold the text tower too), in evaluation mode."""
    if backbone.family != PREFIX:
        raise HeadstartError(f"{backbone.name} is not an image-text model")
    arch, tag = split_name(backbone.name)
    weights = backbone.weights
    quick_gelu = False
    if tag:
        open_clip = _import_open_clip(required=True)
        quick_gelu = bool(_tag_config(open_clip, arch, tag).get("quick_gelu", False))
    if weights.is_random or weights.checkpoint is not None:
        model = seeded(partial(_create, arch, tag, quick_gelu, pretrained=False))()
    else:
        model = _create(arch, tag, quick_gelu, pretrained=True)
    if weights.checkpoint is not None:
        _load_whole(model, weights.checkpoint)
    return model.eval()


def tokenizer_for(backbone: Backbone) -> Any:
    """The tokenizer of ``backbone``'s architecture (``open_clip.get_tokenizer``).

    The default one ships with open_clip; Hugging Face tokenizers need the hub or its cache.
    """
    open_clip = _import_open_clip(required=True)
    arch, _ = split_name(backbone.name)
    try:
        with _quiet():
            return open_clip.get_tokenizer(arch)
    except Exception as exc:  # transformers' offline, missing-file and import errors alike
        raise HeadstartError(
            f"cannot load the tokenizer of {arch} ({first_line(exc)}); it comes from the Hugging "
            "Face hub: on a connected machine put it in the Hugging Face cache (HF_HOME) first "
            "(HF_HUB_OFFLINE=1 skips network retries)"
        ) from None


def _parse(name: str) -> tuple[str, str | None]:
    if not name or ":" in name:
        raise HeadstartError(
            f"open_clip models are named open_clip:ARCH[/PRETRAINED] (e.g. "
            f"open_clip:ViT-B-32/laion2b_s34b_b79k), not {name!r}"
        )
    arch, _, tag = name.partition("/")
    return arch, tag or None


def _import_open_clip(required: bool) -> Any:
    try:
        import open_clip
    except ImportError:
        if required:
            raise HeadstartError(
                "open_clip models need open_clip: pip install 'headstart[clip]'"
            ) from None
        return None
    return open_clip


def _default_tag(open_clip: Any, arch: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if len(tags) == 1:
        return tags[0]
    listed = ", ".join(tags[:8]) + (", ..." if len(tags) > 8 else "")
    which = f"it has several: {listed}" if tags else "it has no pretrained weights"
    raise HeadstartError(
        f"open_clip:{arch} names no pretrained tag and {which}; name one "
        f"(open_clip:{arch}/TAG), or use --weights none or --weights PATH"
    )


def _tag_config(open_clip: Any, arch: str, tag: str) -> dict[str, Any]:
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        close = difflib.get_close_matches(tag, tags, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(tags) or '-'}"
        raise HeadstartError(f"open_clip:{arch} has no pretrained tag {tag!r}; {hint}")
    return dict(cfg)


def _canonical_tag(open_clip: Any, arch: str, tag: str) -> str:
    """The tag as open_clip lists it (its lookups ignore case and take ``-`` for ``_``)."""
    wanted = tag.lower().replace("-", "_")
    known = open_clip.list_pretrained_tags_by_model(arch)
    return next((k for k in known if k.lower().replace("-", "_") == wanted), tag)


def _preprocess(config: dict[str, Any], tag_cfg: dict[str, Any]) -> Preprocess:
    """What ``create_model`` sets as the model's preprocess config: open_clip's defaults, the
    tag's config over them, and the image size of the architecture."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(PreprocessCfg(), tag_cfg)
    size = config.get("vision_cfg", {}).get("image_size", cfg["size"])
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise HeadstartError(f"non-square model inputs ({list(size)}) are not supported")
        size = size[0]
    interpolation = cfg["interpolation"] if cfg["interpolation"] == "bilinear" else "bicubic"
    if cfg["resize_mode"] == "longest" and cfg.get("fill_color", 0) != 0:
        raise HeadstartError("open_clip padding with a fill colour other than black is unsupported")
    return Preprocess(
        resize_size=int(size),
        crop_size=int(size),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=interpolation,
        resize_mode=str(cfg["resize_mode"]),
    )


def _config_digest(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs on the root logger ("No pretrained weights loaded ...", the config it
    chose); headstart's messages come from headstart. Those records are dropped meanwhile."""

    def keep(record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _create(arch: str, tag: str | None, quick_gelu: bool, *, pretrained: bool) -> nn.Module:
    import open_clip

    with _quiet():
        if not pretrained:
            # No tower weights either (a Hugging Face text tower would be downloaded).
            return open_clip.create_model(
                arch, force_quick_gelu=quick_gelu, pretrained_text=False, weights_only=True
            )
        try:
            return open_clip.create_model(
                arch, pretrained=tag, force_quick_gelu=quick_gelu, weights_only=True
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise _unavailable(arch, tag, exc) from None


def _image_tower(arch: str, tag: str | None, quick_gelu: bool, *, pretrained: bool) -> nn.Module:
    import open_clip

    embed_dim = open_clip.get_model_config(arch)["embed_dim"]
    return ImageTower(_create(arch, tag, quick_gelu, pretrained=pretrained), embed_dim)


def _unavailable(arch: str, tag: str | None, exc: Exception) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"cannot load open_clip weights {arch}/{tag} ({first_line(exc)}); offline, put them in "
        "the Hugging Face cache (HF_HOME) on a connected machine first, or use --weights PATH "
        "for a local checkpoint of the whole model, or --weights none for random "
        "initialisation (HF_HUB_OFFLINE=1 skips network retries)"
    )


def _ensure_available(arch: str, tag: str) -> None:
    import open_clip

    try:
        with _quiet():
            open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, tag))
    except Exception as exc:  # network, missing entry and offline errors alike
        raise _unavailable(arch, tag, exc) from None


def _load_whole(model: nn.Module, path) -> None:
    """Load a whole-model state dict; say so in one line when the file holds less."""
    state = load_checkpoint(path)
    if state and all(key.startswith("visual.") for key in state):
        raise HeadstartError(
            f"{path} holds only the image tower (a fine-tuned backbone?), not the text tower; "
            "text needs a checkpoint of the whole image-text model"
        )
    logit_scale = getattr(model, "logit_scale", None)
    saved = state.get("logit_scale")
    if isinstance(logit_scale, torch.Tensor) and saved is not None:
        state["logit_scale"] = saved.reshape(logit_scale.shape)  # scalar vs (1,) across versions
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise HeadstartError(
            f"{path} does not fit this model ({detail}); is it a checkpoint of this architecture?"
        )
