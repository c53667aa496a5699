"""The runner: sources -> plan -> reader -> mapper -> writer, with the catalog kept up to date.

Whatever happens, rows already computed are published before :func:`extract` returns or raises
(Ctrl-C included), and the catalog is committed batch by batch, so a rerun embeds only what is
missing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headstart.cache.catalog import FailureRecord, FileCatalog
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KEY_DTYPE, KeySet
from headstart.cache.store import EmbeddingCache, FingerprintStore
from headstart.cache.writer import ShardWriter
from headstart.errors import HeadstartError
from headstart.extract.memo import RecipeMemo, RememberedRecipe, request_key
from headstart.extract.options import ExtractOptions, PreprocessOverrides
from headstart.extract.parts import Coordinator, Partition, local_device
from headstart.extract.plan import PlanCounts, plan_work
from headstart.extract.sources import ListingSkips, iter_images
from headstart.extract.worklist import WorkList

if TYPE_CHECKING:
    import torch

    from headstart.extract.backbones import Backbone
    from headstart.extract.preprocess import Preprocess

# torch and the model libraries are imported where a model is resolved or run, not here: an
# unchanged rerun whose recipe is remembered plans, finds nothing to embed and never needs them.

__all__ = [
    "ExtractOptions",
    "ExtractSummary",
    "Recipe",
    "extract",
    "options_for_fingerprint",
    "resolve_recipe",
]

log = logging.getLogger(__name__)

RECIPE_FORMAT = 1
_FAILURE_EXAMPLES = 10
# torch.compile costs 20-40 s once per process and pays off for heavy per-image compute
# (oneDNN weight prepacking, BatchNorm folding). Decided on the measured eager rate: compile when
# images take at least this long each and the rest of the run would take at least this long.
_COMPILE_MIN_SECONDS_PER_IMAGE = 0.010
_COMPILE_MIN_REMAINING_SECONDS = 120.0
_COMPILE_PROBE_BATCHES = 3


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


@dataclass
class ExtractSummary:
    """Counts of one run. ``failed`` are files that failed in this run.

    ``listed`` counts every file the sources list; the other counts cover the files this run
    answers for: all of them in one process, only its own share in a ``--part`` run, the
    whole job's after a torchrun job has summed its ranks' shares. ``skipped`` are the
    entries the listing could not look into (unreadable folders), counted apart from ``listed``.
    """

    fingerprint: Fingerprint
    cache_dir: Path
    listed: int = 0
    embedded: int = 0
    from_cache: int = 0
    failed: int = 0
    skipped_failed: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    startup_seconds: float = 0.0
    startup_images: int = 0
    compiled: bool = False
    compile_seconds: float = 0.0
    failure_examples: list[FailureRecord] = field(default_factory=list)
    skipped: ListingSkips = field(default_factory=ListingSkips)
    fallback_reason: str | None = None
    parts: int = 1
    leader: bool = True

    @property
    def answered(self) -> int:
        """Files this run accounts for: embedded, found in the cache, or failed."""
        return self.embedded + self.from_cache + self.failed + self.skipped_failed

    @property
    def images_per_second(self) -> float:
        """Embedded images over the whole embedding phase (model loading and compiling included)."""
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """The rate without the first batch (model build, warm-up) and the compiling batch."""
        seconds = self.embed_seconds - self.startup_seconds - self.compile_seconds
        images = self.embedded - self.startup_images
        return images / seconds if seconds > 0 and images > 0 else self.images_per_second


def resolve_recipe(options: ExtractOptions) -> Recipe:
    """Resolve model, weights, preprocessing, device and precision into a fingerprint.

    Loads no model weights, but builds a user's own network once to find its classifier;
    with ``fallback_random`` it checks the pretrained weights can be had and, when not,
    switches to random initialisation (and a fingerprint saying so).
    """
    from headstart.device import resolve_device, resolve_precision
    from headstart.extract.backbones import WeightsUnavailable, get_backbone
    from headstart.extract.classifier import NO_CLASSIFIER
    from headstart.extract.features import POOLING, with_classifier
    from headstart.extract.preprocess import resolve_preprocess

    backbone = get_backbone(options.model, options.weights)
    inputs = _files_read(backbone, options.fallback_random)
    fallback_reason = None
    if options.fallback_random and backbone.weights.ensure_available is not None:
        try:
            backbone.weights.ensure_available()
        except WeightsUnavailable as exc:
            fallback_reason = str(exc)
            backbone = get_backbone(options.model, "none")
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    preprocess = resolve_preprocess(options.preprocess, backbone.weights.preprocess)
    if options.layer is None:
        backbone = with_classifier(backbone, options.classifier, preprocess.crop_size)
    elif options.classifier is not None:
        raise HeadstartError("--layer and --classifier both say where to embed; give one")
    recipe = {
        "format": RECIPE_FORMAT,
        "model": backbone.name,
        "model_code": backbone.code_identity,
        "weights": backbone.weights.identity,
        "layer": options.layer,
        "pooling": POOLING,
        "preprocess": preprocess.to_dict(),
        "precision": precision,
    }
    if backbone.head_rule == "find-classifier":
        cut = backbone.classifier
        recipe["classifier"] = None if cut in (None, NO_CLASSIFIER) else cut
    weights_spec = "none" if fallback_reason else options.weights
    source = {"model": options.model, "weights": weights_spec, "origin": backbone.weights.origin}
    fingerprint = Fingerprint(recipe, source)
    return Recipe(
        backbone,
        preprocess,
        device,
        precision,
        options.layer,
        fingerprint,
        fallback_reason,
        inputs,
    )


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
    from headstart.extract.preprocess import Preprocess

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
    rebuilt = resolve_recipe(options).fingerprint
    if rebuilt.id != fingerprint.id:
        raise HeadstartError(
            f"cannot reproduce embeddings {fingerprint.id}: then vs now, "
            f"{'; '.join(fingerprint.differences(rebuilt))} (a weights or model file changed?)"
        )
    return options


def extract(
    sources: Sequence[str],
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> ExtractSummary:
    """Embed every image of ``sources`` that the cache does not hold yet.

    Example:
        >>> options = ExtractOptions(model="resnet18")
        >>> s = extract(["photos/"], options, ".headstart")  # doctest: +SKIP
        >>> s.embedded, s.from_cache, s.failed
        (120, 0, 1)
    """
    started = time.perf_counter()
    partition = options.part or Partition.from_environment()
    coordinator = Coordinator(partition) if partition and options.part is None else None
    if coordinator is not None:
        options = dataclasses.replace(options, device=local_device(options.device))
    try:
        summary = _extract(sources, options, cache_dir, partition, coordinator, progress)
        if coordinator is not None:
            _sum_over_ranks(summary, coordinator)
    finally:
        if coordinator is not None:
            coordinator.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _extract(
    sources: Sequence[str],
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    partition: Partition | None,
    coordinator: Coordinator | None,
    progress: bool,
) -> ExtractSummary:
    leader = coordinator is None or coordinator.is_leader
    cache = EmbeddingCache(cache_dir)
    memo = RecipeMemo(cache.root)
    # torchrun ranks resolve their own devices, and start torch for the process group anyway.
    key = request_key(options) if coordinator is None else None
    known = memo.recall(key)
    recipe = None if known is not None else resolve_recipe(options)
    known = known or recipe.remembered()
    if known.fallback_reason and leader:
        log.warning("%s; continuing with random initialisation", known.fallback_reason)
    with cache.catalog() as catalog, tempfile.TemporaryDirectory(prefix="headstart-") as tmp:
        while True:
            planned = _plan(sources, options, cache, known, catalog, Path(tmp), partition, leader)
            if recipe is not None or not len(planned.work):
                break
            # There is work for a model after all: resolve the request for real, and plan
            # again in the rare case the remembered recipe no longer holds.
            recipe = resolve_recipe(options)
            if recipe.fingerprint.id == known.fingerprint.id:
                break
            log.info("the remembered recipe of this request is out of date; resolved again")
            planned.work.close()
            memo.forget(key)
            known = recipe.remembered()
        if coordinator is not None:
            # No rank records a key before all have planned: a rank that planned later would
            # see another's fresh records and its counts would no longer add up with theirs.
            coordinator.wait_for_all()
        if recipe is not None and recipe.inputs is not None:
            memo.remember(key, recipe.remembered(), list(recipe.inputs))
        summary, work = planned.summary, planned.work
        if len(work):
            embed_started = time.perf_counter()
            _embed(
                work,
                recipe,
                options,
                planned.store,
                catalog,
                planned.seen,
                summary,
                progress and leader,
                partition,
            )
            summary.embed_seconds = time.perf_counter() - embed_started
        work.close()
    return summary


@dataclass
class _Planned:
    summary: ExtractSummary
    store: FingerprintStore
    seen: KeySet
    work: WorkList


def _plan(
    sources: Sequence[str],
    options: ExtractOptions,
    cache: EmbeddingCache,
    known: RememberedRecipe,
    catalog: FileCatalog,
    scratch: Path,
    partition: Partition | None,
    leader: bool,
) -> _Planned:
    """List the sources and put what the fingerprint's store lacks on a work list."""
    store = cache.open(known.fingerprint)  # may not exist yet: created once a model runs
    for path, reason in store.unreadable.items() if leader else ():
        log.warning(
            "cache shard %s cannot be read (%s); its images are embedded again (move the "
            "file away; `headstart cache verify` checks a cache)",
            path,
            reason,
        )
    summary = ExtractSummary(known.fingerprint, cache.root, fallback_reason=known.fallback_reason)
    summary.parts, summary.leader = (partition.count if partition else 1), leader
    seen = store.key_set()
    work = WorkList(scratch)
    try:
        counts: PlanCounts = plan_work(
            iter_images(sources, summary.skipped),
            catalog,
            seen,
            work,
            retry_failed=options.retry_failed,
            partition=partition,
        )
    finally:
        work.seal()
    summary.listed, summary.from_cache = counts.listed, counts.cached
    summary.failed, summary.skipped_failed = counts.new_failures, counts.known_failures
    return _Planned(summary, store, seen, work)


def _sum_over_ranks(summary: ExtractSummary, coordinator: Coordinator) -> None:
    """Every rank ends with the job's totals (so every rank exits with the same status).
    ``listed`` is not summed: every rank listed the whole source."""
    fields = ("embedded", "from_cache", "failed", "skipped_failed")
    totals = coordinator.total([getattr(summary, name) for name in fields])
    for name, total in zip(fields, totals, strict=True):
        setattr(summary, name, total)


def _embed(
    work: WorkList,
    recipe: Recipe,
    options: ExtractOptions,
    store: FingerprintStore,
    catalog: FileCatalog,
    seen: KeySet,
    summary: ExtractSummary,
    progress: bool,
    partition: Partition | None = None,
) -> None:
    import torch
    from tqdm import tqdm

    from headstart.extract.features import build_feature_model
    from headstart.extract.mapper import Embedder, PendingEmbedding
    from headstart.extract.reader import ImageFileDataset, iter_batches, make_loader

    started = time.perf_counter()
    features = build_feature_model(recipe.backbone, recipe.layer)
    store.cache.create(recipe.fingerprint)
    on_cuda = recipe.device.type == "cuda"
    embedder = Embedder(
        features.module,
        recipe.preprocess,
        recipe.device,
        recipe.precision,
        compile=bool(options.compile),
    )
    summary.compiled, compiling = bool(options.compile), False  # explicit: compiled at startup
    policy = _CompilePolicy(len(work)) if options.compile is None and not on_cuda else None
    batch_size = options.batch_size or (128 if on_cuda else 32)
    workers = options.workers if options.workers is not None else _default_workers(on_cuda)
    loader = make_loader(
        ImageFileDataset(work, recipe.preprocess, partition),
        batch_size=batch_size,
        workers=workers,
        pin_memory=on_cuda,
    )
    in_flight: tuple[PendingEmbedding, np.ndarray] | None = None
    bar = tqdm(
        total=len(work), unit="img", disable=not progress, dynamic_ncols=True, smoothing=0.05
    )
    writer = ShardWriter(
        store,
        shard_rows=options.shard_rows,
        max_age_s=options.flush_seconds,
        dtype=options.store_dtype,
    )
    try:
        for batch in iter_batches(loader):
            catalog.record(batch.files, batch.failures)
            summary.failed += len(batch.failures)
            room = _FAILURE_EXAMPLES - len(summary.failure_examples)
            summary.failure_examples.extend(batch.failures[: max(room, 0)])
            keys = np.array([f.key for f in batch.files], dtype=KEY_DTYPE)
            fresh = _unseen(keys, seen)
            summary.from_cache += int((~fresh).sum())
            if fresh.any():
                seen.add(keys[fresh])
                began = time.perf_counter()
                pending = embedder.submit(batch.pixels[torch.from_numpy(fresh)])
                if compiling:
                    summary.compile_seconds, compiling = time.perf_counter() - began, False
                if in_flight is not None:
                    writer.add(in_flight[1], in_flight[0].result())
                in_flight = (pending, keys[fresh])
                summary.embedded += int(fresh.sum())
                if not summary.startup_images:
                    summary.startup_seconds = time.perf_counter() - started
                    summary.startup_images = summary.embedded
                elif (
                    policy is not None and (verdict := policy.decide(summary.embedded)) is not None
                ):
                    if verdict:
                        embedder.compile_now()  # compiles during the next batch
                    summary.compiled, compiling, policy = verdict, verdict, None
            bar.update(len(batch.files) + len(batch.failures) + batch.others)
    finally:
        bar.close()
        if in_flight is not None:
            writer.add(in_flight[1], in_flight[0].result())
        writer.close()
        summary.compiled = summary.compiled and embedder.compiled  # a failed compile falls back


class _CompilePolicy:
    """Times the eager pipeline over a few batches after the first, then decides whether
    compiling would pay off for the rest of the run."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.batches = 0
        self.began: tuple[float, int] | None = None

    def decide(self, embedded: int) -> bool | None:
        """None while still measuring; then whether to compile."""
        now = time.perf_counter()
        if self.began is None:
            self.began = (now, embedded)
            return None
        self.batches += 1
        if self.batches < _COMPILE_PROBE_BATCHES:
            return None
        per_image = (now - self.began[0]) / max(embedded - self.began[1], 1)
        remaining = per_image * (self.total - embedded)
        return (
            per_image >= _COMPILE_MIN_SECONDS_PER_IMAGE
            and remaining >= _COMPILE_MIN_REMAINING_SECONDS
        )


def _unseen(keys: np.ndarray, seen: KeySet) -> np.ndarray:
    """Keys neither stored nor embedded earlier in this run, first occurrence only."""
    fresh = ~seen.contains(keys)
    _, first = np.unique(keys, return_index=True)
    in_batch_first = np.zeros(len(keys), dtype=bool)
    in_batch_first[first] = True
    return fresh & in_batch_first


def _default_workers(on_cuda: bool) -> int:
    cores = os.cpu_count() or 1
    # On CPU the model wants the cores; decoding needs a fraction of them.
    return min(16, cores) if on_cuda else max(1, min(4, cores // 2))
