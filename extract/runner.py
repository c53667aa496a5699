"""The runner: sources -> plan -> reader -> embedder -> writer, with the catalog kept up to date.

Whatever happens, rows already computed are published before :func:`extract` returns or raises
(Ctrl-C included), and the catalog is committed batch by batch, so a rerun embeds only what is
missing. The decisions along the way live in :mod:`.policies`; the time each stage takes goes
into the summary (see :mod:`.stages`), and is logged at INFO (``headstart -v``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headstart.cache.catalog import FailureRecord, FileCatalog
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KEY_DTYPE, KeyMembership
from headstart.cache.maintenance import compact_small_shards
from headstart.cache.store import EmbeddingCache, FingerprintStore
from headstart.cache.writer import ShardWriter
from headstart.errors import HeadstartError
from headstart.extract.download import DownloadLimits
from headstart.extract.memo import RecipeMemo, RememberedRecipe, request_key
from headstart.extract.options import ExtractOptions
from headstart.extract.parts import Coordinator, Partition, local_device
from headstart.extract.plan import PlanCounts, plan_shards, plan_work
from headstart.extract.policies import CompilePolicy, fresh_rows, record_failures
from headstart.extract.recipe import Recipe, resolve_recipe
from headstart.extract.samples import SampleFields
from headstart.extract.shards import ShardRef, list_shards, split_sources
from headstart.extract.sources import ListingSkips, iter_images
from headstart.extract.stages import STAGES, StageClock, describe_stages
from headstart.extract.table_plan import RowList, plan_tables, url_keys
from headstart.extract.tables import Table, TableColumns, is_table_source, open_table
from headstart.extract.worklist import WorkList

if TYPE_CHECKING:
    import torch
    from tqdm import tqdm

    from headstart.extract.reader import DecodedBatch
    from headstart.models.device_decode import DeviceJpegDecoder
    from headstart.models.embedder import Embedder, PendingEmbedding

# torch and the model libraries are imported where a model is resolved or run, not here: an
# unchanged rerun whose recipe is remembered plans, finds nothing to embed and never needs them.

__all__ = ["ExtractOptions", "ExtractSummary", "extract"]

log = logging.getLogger(__name__)

# A guess at a tar shard's images from its size, for the compile decision only (img2dataset's
# default 256-pixel JPEGs run at 10-30 KB; the guess errs towards fewer images).
_BYTES_PER_SHARD_IMAGE = 64 * 1024


@dataclass
class ExtractSummary:
    """Counts of one run. ``failed`` are files that failed in this run.

    ``listed`` counts every file the sources list; the other counts cover the files this run
    answers for: all of them in one process, only its own share in a ``--part`` run, the
    whole job's after a torchrun job has summed its ranks' shares. ``skipped`` are the
    entries the listing could not look into (unreadable folders), counted apart from ``listed``.
    Tar shards are listed as they are read, each by the part that reads it: of ``listed``,
    ``listed_in_shards`` are their items.
    ``stage_seconds`` says where the embedding went (see :mod:`.stages`): read, decode (summed
    over the ``loader_workers`` worker processes), forward and write. ``decoded_on_device``
    counts the JPEGs decoded where the model runs (``--decode``), the rest by the workers.
    """

    fingerprint: Fingerprint
    cache_dir: Path
    listed: int = 0
    listed_in_shards: int = 0
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
    decoded_on_device: int = 0
    failure_examples: list[FailureRecord] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    loader_workers: int = 0
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


def extract(
    sources: Sequence[str],
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    fields: SampleFields | None = None,
    downloads: DownloadLimits | None = None,
) -> ExtractSummary:
    """Embed every image of ``sources`` that the cache does not hold yet.

    Sources are folders, manifests, image files, tar shards (see
    :mod:`~headstart.extract.shards`) and tables of paths or URLs (see
    :mod:`~headstart.extract.tables`); ``fields`` (default: ``options.fields``) says where a
    tar sample's label and caption come from (default: its ``.cls`` and ``.txt``) and names a
    table's columns; ``downloads``
    bounds the downloads of URLs.

    Example:
        >>> options = ExtractOptions(model="resnet18")
        >>> s = extract(["photos/"], options, ".headstart")  # doctest: +SKIP
        >>> s.embedded, s.from_cache, s.failed
        (120, 0, 1)
    """
    started = time.perf_counter()
    fields = fields or options.fields
    # Tables are opened (their columns checked) before anything else: a missing column
    # fails the run at once.
    columns = TableColumns.from_fields(fields)
    tables = [open_table(s, columns) for s in sources if is_table_source(s, columns)]
    if tables:
        named = {table.name for table in tables}
        sources = [s for s in sources if _absolute(s) not in named]
    inputs = _Inputs(sources, tables, fields, downloads or DownloadLimits())
    partition = options.part or Partition.from_environment()
    coordinator = Coordinator(partition) if partition and options.part is None else None
    if coordinator is not None:
        options = dataclasses.replace(options, device=local_device(options.device))
    try:
        summary = _extract(inputs, options, cache_dir, partition, coordinator, progress)
        if coordinator is not None:
            _sum_over_ranks(summary, coordinator)
    finally:
        if coordinator is not None:
            coordinator.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _absolute(source: str) -> str:
    return source if "://" in source else os.path.abspath(source)


@dataclass(frozen=True)
class _Inputs:
    """What to read: file and shard sources, tables (opened), and how to read them."""

    sources: Sequence[str]
    tables: Sequence[Table]
    fields: SampleFields
    downloads: DownloadLimits


def _extract(
    inputs: _Inputs,
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
        request = _Request(inputs, options, cache, catalog, Path(tmp), partition, leader)
        planned, recipe = _plan_for_recipe(request, known, recipe, memo, key)
        if coordinator is not None:
            # No rank records a key before all have planned: a rank that planned later would
            # see another's fresh records and its counts would no longer add up with theirs.
            coordinator.wait_for_all()
        if recipe is not None and recipe.inputs is not None:
            memo.remember(key, recipe.remembered(), list(recipe.inputs))
        if planned.pending:
            _embed_timed(
                _RunContext(
                    recipe,
                    options,
                    catalog,
                    partition,
                    progress and leader,
                    inputs,
                    _jpeg_decoder(recipe, options.decode),
                ),
                planned,
            )
            compacted = compact_small_shards(cache, planned.store.fingerprint)
            if compacted is not None:
                log.info(
                    "merged small shards: %d shards now %d",
                    compacted.shards_before,
                    compacted.shards_after,
                )
        planned.work.close()
    return planned.summary


@dataclass(frozen=True)
class _Request:
    """What a run was asked to do, and where it keeps its answers while planning."""

    inputs: _Inputs
    options: ExtractOptions
    cache: EmbeddingCache
    catalog: FileCatalog
    scratch: Path
    partition: Partition | None
    leader: bool


@dataclass
class _Planned:
    summary: ExtractSummary
    store: FingerprintStore
    seen: KeyMembership
    work: WorkList
    shards: list[ShardRef] = field(default_factory=list)
    rows: RowList | None = None

    @property
    def pending(self) -> bool:
        """Whether anything is left to read: files on the work list, shards, table rows."""
        return bool(len(self.work) or self.shards or self.table_rows)

    @property
    def table_rows(self) -> int:
        return len(self.rows) if self.rows is not None else 0

    def expected_images(self) -> int:
        """About how many images the run will read: the work list and table rows, and the
        shards' images guessed from their size (a shard's count is known only once read)."""
        guessed = sum(ref.size for ref in self.shards) // _BYTES_PER_SHARD_IMAGE
        return len(self.work) + self.table_rows + guessed


def _plan_for_recipe(
    request: _Request,
    known: RememberedRecipe,
    recipe: Recipe | None,
    memo: RecipeMemo,
    key: str | None,
) -> tuple[_Planned, Recipe | None]:
    """Plan with the remembered recipe; when there is work for a model after all, resolve the
    request for real, and plan again in the rare case the remembered recipe no longer holds."""
    while True:
        planned = _plan(request, known)
        if recipe is not None or not planned.pending:
            return planned, recipe
        recipe = resolve_recipe(request.options)
        if recipe.fingerprint.id == known.fingerprint.id:
            return planned, recipe
        log.info("the remembered recipe of this request is out of date; resolved again")
        planned.work.close()
        memo.forget(key)
        known = recipe.remembered()


def _plan(request: _Request, known: RememberedRecipe) -> _Planned:
    """List the sources and put what the fingerprint's store lacks on a work list."""
    store = request.cache.open(known.fingerprint)  # may not exist yet: created once a model runs
    for path, reason in store.unreadable.items() if request.leader else ():
        log.warning(
            "cache shard %s cannot be read (%s); its images are embedded again (move the "
            "file away; `headstart cache verify` checks a cache)",
            path,
            reason,
        )
    summary = ExtractSummary(
        known.fingerprint, request.cache.root, fallback_reason=known.fallback_reason
    )
    partition = request.partition
    summary.parts, summary.leader = (partition.count if partition else 1), request.leader
    seen = store.seen_keys()
    inputs = request.inputs
    file_sources, shard_sources = split_sources(inputs.sources)
    shards = list_shards(shard_sources)  # a missing shard stops the run before any work
    work = WorkList(request.scratch)
    rows = RowList(request.scratch) if inputs.tables else None
    try:
        counts: PlanCounts = (
            plan_work(
                iter_images(file_sources, summary.skipped),
                request.catalog,
                seen,
                work,
                retry_failed=request.options.retry_failed,
                partition=partition,
            )
            if file_sources
            else PlanCounts()
        )
        to_read = plan_shards(
            shards,
            request.catalog,
            seen,
            inputs.fields,
            counts,
            retry_failed=request.options.retry_failed,
            partition=partition,
        )
        if rows is not None:
            plan_tables(
                inputs.tables,
                request.catalog,
                seen,
                rows,
                counts,
                retry_failed=request.options.retry_failed,
                partition=partition,
            )
    finally:
        work.seal()
        if rows is not None:
            rows.seal()
    summary.listed, summary.from_cache = counts.listed, counts.cached
    summary.listed_in_shards = counts.listed_in_shards
    summary.failed, summary.skipped_failed = counts.new_failures, counts.known_failures
    return _Planned(summary, store, seen, work, to_read, rows)


def _sum_over_ranks(summary: ExtractSummary, coordinator: Coordinator) -> None:
    """Every rank ends with the job's totals (so every rank exits with the same status).
    ``listed`` is not summed (every rank listed the whole source) but for the items of tar
    shards, which each rank lists only for its own shards."""
    fields = ("embedded", "from_cache", "failed", "skipped_failed", "listed_in_shards")
    own = summary.listed_in_shards
    totals = coordinator.total([getattr(summary, name) for name in fields])
    for name, total in zip(fields, totals, strict=True):
        setattr(summary, name, total)
    summary.listed += summary.listed_in_shards - own


@dataclass(frozen=True)
class _RunContext:
    """What stays fixed while a run embeds its work list."""

    recipe: Recipe
    options: ExtractOptions
    catalog: FileCatalog
    partition: Partition | None
    progress: bool
    inputs: _Inputs
    jpeg_decoder: DeviceJpegDecoder | None = None

    @property
    def on_cuda(self) -> bool:
        return self.recipe.device.type == "cuda"

    @property
    def batch_size(self) -> int:
        return self.options.batch_size or (128 if self.on_cuda else 32)

    @property
    def workers(self) -> int:
        if self.options.workers is not None:
            return self.options.workers
        cores = os.cpu_count() or 1
        # On CPU the model wants the cores; decoding needs a fraction of them.
        return min(16, cores) if self.on_cuda else max(1, min(4, cores // 2))


def _embed_timed(run: _RunContext, planned: _Planned) -> None:
    """Embed, then say how long it took and where the time went (shown with -v)."""
    summary = planned.summary
    began = time.perf_counter()
    _embed(run, planned)
    summary.embed_seconds = time.perf_counter() - began
    log.info("%s", describe_stages(summary.stage_seconds, summary.loader_workers))
    if run.jpeg_decoder is not None:
        log.info("%d JPEGs decoded on %s", summary.decoded_on_device, run.recipe.device)


def _embed(run: _RunContext, planned: _Planned) -> None:
    """Reader -> embedder -> writer over the work list, one batch in flight while the next is
    read. Rows already embedded are stored whatever happens, Ctrl-C included."""
    started = time.perf_counter()
    summary, clock = planned.summary, StageClock(planned.summary.stage_seconds)
    summary.loader_workers = run.workers
    summary.compiled = bool(run.options.compile)  # explicit: compiled at startup
    embedder = _start_embedder(run, planned.store)
    from headstart.extract.deferred import decode_deferred  # imports torch, as the model did

    expected = planned.expected_images()
    mapper = _Mapper(embedder, _compile_policy(run, expected), summary, clock)
    writer = _InFlight(_shard_writer(run, planned.store), clock)
    total = len(planned.work) + planned.table_rows if not planned.shards else None
    with _progress_bar(run, total) as bar:
        try:
            for batch in _read_batches(run, planned, clock):
                if run.jpeg_decoder is not None:
                    summary.decoded_on_device += len(batch.deferred)
                    with clock.timing("decode"):
                        batch = decode_deferred(batch, run.jpeg_decoder)
                keys, pixels = _admit(batch, run.catalog, planned, clock)
                if len(keys):
                    writer.push(mapper.submit(pixels), keys)
                    summary.embedded += len(keys)
                    if summary.startup_images:
                        mapper.consider_compiling()
                    else:
                        _end_startup(summary, started)
                bar.update(batch.item_count)
        finally:
            writer.finish()
            summary.compiled = summary.compiled and embedder.compiled  # a failed compile falls back


def _start_embedder(run: _RunContext, store: FingerprintStore) -> Embedder:
    """Build the model and make room for its embeddings."""
    # The module, not the function: benchmarks swap in a recording Embedder there.
    from headstart.models import embedder as embedder_module

    embedder = embedder_module.build_embedder(run.recipe, compile=bool(run.options.compile))
    # Only once the model is built: weights that cannot be had leave no empty fingerprint.
    store.cache.create(run.recipe.fingerprint)
    return embedder


def _jpeg_decoder(recipe: Recipe, place: str) -> DeviceJpegDecoder | None:
    """The decoder of JPEGs on the model's device, where ``--decode`` puts them there: always
    for ``device``, on a GPU that can for ``auto``; None leaves them to the reading workers."""
    if place == "cpu" or (place == "auto" and recipe.device.type != "cuda"):
        return None
    from headstart.models.device_decode import DeviceJpegDecoder, device_decoding_works

    problem = device_decoding_works(recipe.device)
    if problem is not None:
        if place == "device":
            raise HeadstartError(
                f"--decode device: JPEGs cannot be decoded on {recipe.device}: {problem}; "
                "use --decode cpu"
            )
        log.warning("JPEGs decode on the CPU: %s cannot (%s)", recipe.device, problem)
        return None
    return DeviceJpegDecoder(recipe.preprocess, recipe.device)


def _compile_policy(run: _RunContext, total: int) -> CompilePolicy | None:
    """A policy to decide on compiling mid-run, when the options leave it open."""
    return CompilePolicy(total, on_cuda=run.on_cuda) if run.options.compile is None else None


def _shard_writer(run: _RunContext, store: FingerprintStore) -> ShardWriter:
    options = run.options
    return ShardWriter(
        store,
        shard_rows=options.shard_rows,
        max_age_s=options.flush_seconds,
        dtype=options.store_dtype,
    )


def _progress_bar(run: _RunContext, total: int | None) -> tqdm:
    from tqdm import tqdm

    return tqdm(
        total=total, unit="img", disable=not run.progress, dynamic_ncols=True, smoothing=0.05
    )


def _read_batches(run: _RunContext, planned: _Planned, clock: StageClock) -> Iterator[DecodedBatch]:
    """The reader: decoded batches of the work list in order, then of the shards. Waiting for
    one counts as read; the decoding it carries (done in the loader's workers) as decode."""
    from headstart.extract.reader import ImageFileDataset, iter_batches, make_loader
    from headstart.extract.shard_reader import make_shard_loader

    defer_jpegs = run.jpeg_decoder is not None
    loaders = []
    if len(planned.work):
        dataset = ImageFileDataset(
            planned.work, run.recipe.preprocess, run.partition, defer_jpegs=defer_jpegs
        )
        loaders.append(
            make_loader(
                dataset, batch_size=run.batch_size, workers=run.workers, pin_memory=run.on_cuda
            )
        )
    if planned.shards:
        loaders.append(
            make_shard_loader(
                planned.shards,
                run.recipe.preprocess,
                run.inputs.fields,
                store=planned.store,
                batch_size=run.batch_size,
                workers=run.workers,
                pin_memory=run.on_cuda,
                defer_jpegs=defer_jpegs,
            )
        )
    if planned.rows is not None and len(planned.rows):
        from headstart.extract.table_reader import make_table_loader

        loaders.append(
            make_table_loader(
                planned.rows,
                run.recipe.preprocess,
                run.inputs.downloads,
                store=planned.store,
                batch_size=run.batch_size,
                workers=run.workers,
                pin_memory=run.on_cuda,
                defer_jpegs=defer_jpegs,
            )
        )
    for loader in loaders:
        for batch in clock.timed("read", iter_batches(loader)):
            clock.add("decode", batch.decode_seconds)
            yield batch


def _admit(
    batch: DecodedBatch, catalog: FileCatalog, planned: _Planned, clock: StageClock
) -> tuple[np.ndarray, torch.Tensor]:
    """Record a batch in the catalog and the summary; the keys and pixels left to embed."""
    import torch

    with clock.timing("write"):
        catalog.record(batch.files, batch.failures, batch.samples, batch.shards)
        catalog.record_urls(url_keys(batch.samples))
    summary = planned.summary
    summary.listed += batch.streamed  # a shard's items are listed as it is read
    summary.listed_in_shards += batch.streamed
    summary.from_cache += batch.stored  # tar samples the store held: recorded, not decoded
    record_failures(summary, batch.failures)
    keys = np.array(batch.keys, dtype=KEY_DTYPE)
    fresh = fresh_rows(keys, planned.seen)
    summary.from_cache += int((~fresh).sum())
    planned.seen.add(keys[fresh])
    return keys[fresh], batch.pixels[torch.from_numpy(fresh).to(batch.pixels.device)]


def _end_startup(summary: ExtractSummary, started: float) -> None:
    """The first embedded batch ends the startup: building the model, the first forward pass."""
    summary.startup_seconds = time.perf_counter() - started
    summary.startup_images = summary.embedded


class _Mapper:
    """The mapper: submits batches to the embedder (timed as forward), and compiles the model
    mid-run when the compile policy says it pays off."""

    def __init__(
        self,
        embedder: Embedder,
        policy: CompilePolicy | None,
        summary: ExtractSummary,
        clock: StageClock,
    ) -> None:
        self.embedder = embedder
        self.policy = policy
        self.summary = summary
        self.clock = clock
        self.compiling = False  # the next batch compiles the model

    def submit(self, pixels: torch.Tensor) -> PendingEmbedding:
        began = time.perf_counter()
        pending = self.embedder.submit(pixels)
        seconds = time.perf_counter() - began
        self.clock.add("forward", seconds)
        if self.compiling:
            self.summary.compile_seconds, self.compiling = seconds, False
        return pending

    def consider_compiling(self) -> None:
        """Ask the policy after a batch; once it answers yes, the next batch compiles."""
        verdict = self.policy.decide(self.summary.embedded) if self.policy else None
        if verdict is None:
            return
        if verdict:
            self.embedder.compile_now()
        self.summary.compiled, self.compiling, self.policy = verdict, verdict, None


class _InFlight:
    """The writer, one batch behind: a submitted batch is held while the next one is read and
    submitted, so a GPU computes while the host reads (on CUDA submit returns early)."""

    def __init__(self, writer: ShardWriter, clock: StageClock) -> None:
        self.writer = writer
        self.clock = clock
        self.held: tuple[PendingEmbedding, np.ndarray] | None = None

    def push(self, pending: PendingEmbedding, keys: np.ndarray) -> None:
        """Store the batch held so far, and hold this one."""
        self._store_held()
        self.held = (pending, keys)

    def finish(self) -> None:
        """Store the held batch and publish every row, after an error or Ctrl-C too."""
        try:
            self._store_held()
        finally:
            with self.clock.timing("write"):
                self.writer.close()

    def _store_held(self) -> None:
        if self.held is None:
            return
        (pending, keys), self.held = self.held, None
        with self.clock.timing("forward"):  # waits for the device to finish the batch
            vectors = pending.result()
        with self.clock.timing("write"):
            self.writer.add(keys, vectors)
