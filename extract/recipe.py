"""Resolving a request into a recipe: which backbone, weights, preprocessing, device and
precision, and the fingerprint that names the vectors they make.

This is the one place a request becomes a model: ``extract`` resolves its options here, and the
service, fine-tuning, the heads' ``evaluate``/``predict`` and text encoding rebuild the model of
a fingerprint through :func:`recipe_for_fingerprint`, resolving it once. Loading weights and
running the model happen later (:func:`headstart.models.embedder.build_embedder`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headstart.cache.fingerprint import Fingerprint
from headstart.errors import HeadstartError
from headstart.extract.memo import RememberedRecipe
from headstart.extract.options import ExtractOptions, PreprocessOverrides

if TYPE_CHECKING:
    import torch

    from headstart.models.backbones import Backbone
    from headstart.models.preprocess import Preprocess

# torch and the model libraries are imported inside the functions that need them: a rerun
# whose recipe is remembered never resolves one, and never imports them.

__all__ = [
    "RECIPE_FORMAT",
    "Recipe",
    "options_for_fingerprint",
    "recipe_for_fingerprint",
    "resolve_recipe",
]

RECIPE_FORMAT = 1


@dataclass(frozen=True)
class Recipe:
    """A resolved set of options: the backbone, preprocessing, device, precision, fingerprint."""

    backbone: Backbone
    preprocess: Preprocess
    device: torch.device
    precision: str
    layer: str | None
    fingerprint: Fingerprint
    fallback_reason: str | None = None
    inputs: tuple[str, ...] | None = ()

    def remembered(self) -> RememberedRecipe:
        return RememberedRecipe(self.fingerprint, self.fallback_reason)


def resolve_recipe(options: ExtractOptions) -> Recipe:
    """Resolve model, weights, preprocessing, device and precision into a fingerprint.

    Loads no model weights, but builds a user's own network once to find its classifier;
    with ``fallback_random`` it checks the pretrained weights can be had and, when not,
    switches to random initialisation (and a fingerprint saying so).
    """
    from headstart.device import resolve_device, resolve_precision
    from headstart.models.features import with_classifier
    from headstart.models.preprocess import resolve_preprocess

    backbone, fallback_reason, inputs = _chosen_backbone(options)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    preprocess = resolve_preprocess(options.preprocess, backbone.weights.preprocess)
    if options.layer is None:
        backbone = with_classifier(backbone, options.classifier, preprocess.crop_size)
    elif options.classifier is not None:
        raise HeadstartError("--layer and --classifier both say where to embed; give one")
    weights_spec = "none" if fallback_reason else options.weights
    source = {"model": options.model, "weights": weights_spec, "origin": backbone.weights.origin}
    recipe = _recipe_of(backbone, options.layer, preprocess, precision)
    return Recipe(
        backbone,
        preprocess,
        device,
        precision,
        options.layer,
        Fingerprint(recipe, source),
        fallback_reason,
        inputs,
    )


def _chosen_backbone(
    options: ExtractOptions,
) -> tuple[Backbone, str | None, tuple[str, ...] | None]:
    """The requested backbone, or with ``fallback_random`` and its weights out of reach the
    randomly initialised one and why; and the files that decided (see :func:`_files_read`)."""
    from headstart.models.backbones import WeightsUnavailable, get_backbone

    backbone = get_backbone(options.model, options.weights)
    inputs = _files_read(backbone, options.fallback_random)
    if options.fallback_random and backbone.weights.ensure_available is not None:
        try:
            backbone.weights.ensure_available()
        except WeightsUnavailable as exc:
            return get_backbone(options.model, "none"), str(exc), inputs
    return backbone, None, inputs


def _recipe_of(
    backbone: Backbone, layer: str | None, preprocess: Preprocess, precision: str
) -> dict[str, object]:
    """What decides the numbers: the fingerprint's recipe."""
    from headstart.models.classifier import NO_CLASSIFIER
    from headstart.models.features import POOLING

    recipe: dict[str, object] = {
        "format": RECIPE_FORMAT,
        "model": backbone.name,
        "model_code": backbone.code_identity,
        "weights": backbone.weights.identity,
        "layer": layer,
        "pooling": POOLING,
        "preprocess": preprocess.to_dict(),
        "precision": precision,
    }
    if backbone.head_rule == "find-classifier":
        cut = backbone.classifier
        recipe["classifier"] = None if cut in (None, NO_CLASSIFIER) else cut
    return recipe


def _files_read(backbone: Backbone, fallback_random: bool) -> tuple[str, ...] | None:
    """The local files whose state decided this resolution (see :mod:`.memo`); None when
    it also depends on something a ``stat`` cannot check."""
    files = [backbone.code_file, backbone.weights.checkpoint and str(backbone.weights.checkpoint)]
    if fallback_random and backbone.weights.ensure_available is not None:
        if backbone.weights.availability_file is None:
            return None
        files.append(backbone.weights.availability_file)
    return tuple(path for path in files if path)


def options_for_fingerprint(fingerprint: Fingerprint, **runtime: object) -> ExtractOptions:
    """Options that embed images exactly as ``fingerprint`` says (``runtime`` sets device,
    batch size and the like); refuses when that can no longer be done, e.g. a moved file."""
    return _rebuilt(fingerprint, runtime)[0]


def recipe_for_fingerprint(fingerprint: Fingerprint, **runtime: object) -> Recipe:
    """The recipe that makes ``fingerprint``'s vectors again, resolved once; refuses when that
    can no longer be done (see :func:`options_for_fingerprint`)."""
    return _rebuilt(fingerprint, runtime)[1]


def _rebuilt(fingerprint: Fingerprint, runtime: dict) -> tuple[ExtractOptions, Recipe]:
    from headstart.models.preprocess import Preprocess

    recipe, source = fingerprint.recipe, fingerprint.source
    if "model" not in source:
        raise HeadstartError(f"fingerprint {fingerprint.id} does not say how to rebuild its model")
    preprocess = Preprocess.from_dict(recipe["preprocess"])
    # Only a user's own network's recipe names a classifier; null there means it had none.
    classifier = (recipe["classifier"] or "none") if "classifier" in recipe else None
    options = ExtractOptions(
        model=source["model"],
        weights=source.get("weights", "DEFAULT"),
        layer=recipe.get("layer"),
        classifier=classifier,
        preprocess=PreprocessOverrides(**dataclasses.asdict(preprocess)),
        precision=recipe["precision"],
        **runtime,
    )
    rebuilt = resolve_recipe(options)
    if rebuilt.fingerprint.id != fingerprint.id:
        raise HeadstartError(
            f"cannot reproduce embeddings {fingerprint.id}: then vs now, "
            f"{'; '.join(fingerprint.differences(rebuilt.fingerprint))} "
            "(a weights or model file changed?)"
        )
    return options, rebuilt
