"""The training loop: epochs of AdamW steps, validation, checkpoints, early stopping, resume.

One optimizer step sees ``batch_size`` images, split into ``accumulate`` micro-batches whose
gradients add up; on CUDA out-of-memory the micro-batch is halved and the step redone, so the
effective batch (and the learning-rate schedule) never changes. Ctrl-C (or SIGTERM) lets the
current step finish, saves the state and stops; ``resume`` continues from it along the same path
an uninterrupted run takes (same batches, crops and random state). A second Ctrl-C stops at once,
and the last checkpoint is the resume point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from headstart.atomic import write_text_atomic
from headstart.classify.metrics import score
from headstart.device import autocast
from headstart.errors import HeadstartError
from headstart.extract.reader import iter_batches
from headstart.finetune.checkpoint import load_state, save_state
from headstart.finetune.data import EpochSampler, LabelledImages, make_loader
from headstart.finetune.network import ClassifierNetwork, parameter_groups, set_train_mode
from headstart.finetune.schedule import warmup_cosine
from headstart.finetune.settings import METRICS, LoopSettings

__all__ = ["EpochRecord", "Trainer", "TrainingInterrupted"]

log = logging.getLogger(__name__)

CHECKPOINT, BEST = "checkpoint.pt", "best.pt"


@dataclass
class EpochRecord:
    epoch: int
    val_accuracy: float
    val_loss: float
    val_balanced_accuracy: float | None = None
    val_macro_f1: float | None = None
    train_loss: float | None = None
    lr: float | None = None
    images_per_second: float | None = None
    seconds: float | None = None
    skipped_images: int = 0

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM during training; ``checkpoint.pt`` holds the state at ``epoch``
    (epochs completed) and ``step`` (steps of the next epoch completed)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"interrupted in epoch {epoch + 1} after step {step}")
        self.epoch, self.step = epoch, step


@dataclass
class _Progress:
    """What the checkpoint records besides the module, optimizer and scheduler states."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed within the current epoch
    loss_sum: float = 0.0
    images: int = 0
    skipped: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Fine-tunes ``network`` on ``train_set``, choosing by accuracy on ``val_set``.

    Writes ``checkpoint.pt`` (every epoch and on Ctrl-C), ``best.pt`` (the network state with
    the best validation accuracy, epoch 0 being the starting point) and ``metrics.jsonl``.
    """

    def __init__(
        self,
        network: ClassifierNetwork,
        train_set: LabelledImages,
        val_set: LabelledImages,
        settings: LoopSettings,
        run_dir: Path,
        device: torch.device,
        *,
        progress: bool = False,
    ) -> None:
        self.network = network.to(device).to(memory_format=network.memory_format)
        self.train_set, self.val_set = train_set, val_set
        self.settings, self.run_dir, self.device = settings, run_dir, device
        self.progress = progress
        self.accumulate = settings.accumulate
        self.steps_per_epoch = math.ceil(len(train_set) / settings.batch_size)
        total = self.steps_per_epoch * settings.epochs
        self.optimizer = torch.optim.AdamW(
            parameter_groups(network, settings.lr, settings.head_lr_mult, settings.weight_decay),
            fused=device.type == "cuda",
        )
        self.scheduler = warmup_cosine(self.optimizer, total, round(settings.warmup * total))
        # fp16 gradients underflow without loss scaling; bf16 has float32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
        self.sampler = EpochSampler(len(train_set), settings.seed)
        self.state = _Progress()
        self.saved_at: tuple[int, int] | None = None  # (epoch, step) of checkpoint.pt
        self._stop_requested = False
        set_train_mode(network, settings.train_bn)
        self.folded_batchnorm = network.fold_batchnorm()

    # -- state -----------------------------------------------------------------------------

    def resume(self) -> None:
        """Load ``checkpoint.pt``: module, optimizer, scheduler, scaler, RNG and progress."""
        saved = load_state(self.run_dir / CHECKPOINT)
        try:
            self.network.load_state_dict(saved["network"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(saved["rng"])
            if self.device.type == "cuda" and "cuda_rng" in saved:
                torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
            self.accumulate = max(self.accumulate, int(saved.get("accumulate", 1)))
            self.state = _Progress(**saved["progress"])
            self.saved_at = (self.state.epoch, self.state.step)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise HeadstartError(
                f"{self.run_dir / CHECKPOINT} does not belong to this run ({exc}); "
                "start afresh with another --out"
            ) from None

    def _save(self) -> None:
        state = {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "accumulate": self.accumulate,
            "progress": dict(self.state.__dict__),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_state(self.run_dir / CHECKPOINT, state)
        self.saved_at = (self.state.epoch, self.state.step)

    # -- the loop --------------------------------------------------------------------------

    def fit(self, on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        """Train the remaining epochs; return every epoch's record (epoch 0: before training).

        Raises :class:`TrainingInterrupted` on Ctrl-C once a checkpoint exists to resume from.
        """
        try:
            with self._stop_requests():
                if not self.state.history:
                    self._finish_epoch(self._evaluate_record(0), first=True)
                    if on_epoch:
                        on_epoch(EpochRecord(**self.state.history[-1]))
                while self.state.epoch < self.settings.epochs and not self._stopped_early():
                    self._stop_if_requested()
                    record = self._train_epoch()
                    self._finish_epoch(record)
                    if on_epoch:
                        on_epoch(record)
        except KeyboardInterrupt:
            # Stopped at once (a second Ctrl-C): checkpoint.pt, written whole or not at all,
            # holds the last consistent point to resume from.
            if self.saved_at is None:
                raise
            raise TrainingInterrupted(*self.saved_at) from None
        return [EpochRecord(**h) for h in self.state.history]

    @contextlib.contextmanager
    def _stop_requests(self):
        """Turn SIGINT/SIGTERM into a request honoured between steps: an interrupt inside an
        optimizer step would leave weights updated that the step count does not know of."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def request(signum, frame) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning("stopping after this step (Ctrl-C again to stop at once)")

        previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _stop_if_requested(self) -> None:
        if self._stop_requested:
            if self.saved_at != (self.state.epoch, self.state.step):
                self._save()
            raise TrainingInterrupted(self.state.epoch, self.state.step)

    def _stopped_early(self) -> bool:
        patience = self.settings.patience
        return patience > 0 and self.state.bad_epochs >= patience

    def _train_epoch(self) -> EpochRecord:
        epoch, state = self.state.epoch, self.state
        self.train_set.epoch = epoch
        self.sampler.set_epoch(epoch, skip=state.step * self.settings.batch_size)
        loader = make_loader(
            self.train_set,
            batch_size=self.settings.batch_size,
            workers=self.settings.workers,
            pin_memory=self.device.type == "cuda",
            sampler=self.sampler,
        )
        set_train_mode(self.network, self.settings.train_bn)
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=state.step,
            desc=f"epoch {epoch + 1}/{self.settings.epochs}",
            unit="step",
            disable=not self.progress,
            leave=False,
        )
        started, images_at_start = time.perf_counter(), state.images
        try:
            kept = "the last checkpoint is kept: rerun with --resume to continue"
            for pixels, labels, skipped in iter_batches(loader, kept):
                state.skipped += skipped
                if len(labels):
                    loss = self.train_step(pixels, labels)
                    state.loss_sum += loss * len(labels)
                    state.images += len(labels)
                self.scheduler.step()
                state.step += 1
                seen = state.images - images_at_start
                rate = seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(
                    loss=f"{state.loss_sum / max(state.images, 1):.4f}", img_s=f"{rate:.1f}"
                )
                bar.update()
                self._stop_if_requested()
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        record = self._evaluate_record(epoch + 1)
        record.train_loss = state.loss_sum / max(state.images, 1)
        record.lr = self.optimizer.param_groups[0]["lr"]
        record.images_per_second = (state.images - images_at_start) / max(seconds, 1e-9)
        record.seconds = seconds
        record.skipped_images = state.skipped
        return record

    def _finish_epoch(self, record: EpochRecord, first: bool = False) -> None:
        state = self.state
        if record.val_accuracy > state.best_accuracy:
            state.best_accuracy, state.best_epoch, state.bad_epochs = (
                record.val_accuracy,
                record.epoch,
                0,
            )
            save_state(self.run_dir / BEST, self.network.state_dict())
        elif not first:
            state.bad_epochs += 1
        if not first:
            state.epoch += 1
            state.step, state.loss_sum, state.images, state.skipped = 0, 0.0, 0, 0
        state.history.append(record.as_dict())
        # Rewritten whole, so a resume never duplicates a line.
        write_text_atomic(
            self.run_dir / METRICS, "".join(json.dumps(h) + "\n" for h in state.history)
        )
        self._save()

    def train_step(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer step on a (N, 3, H, W) uint8 batch; returns its mean loss."""
        pixels = pixels.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        while True:
            try:
                loss = self._accumulated_step(pixels, labels)
                break
            except torch.cuda.OutOfMemoryError:
                micro = math.ceil(len(labels) / self.accumulate)
                if micro <= 1:
                    raise HeadstartError(
                        "out of GPU memory for a single image; use a smaller model, --unfreeze "
                        "last:N or --device cpu"
                    ) from None
                self.accumulate *= 2
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                log.warning(
                    "out of GPU memory at %d images per pass; retrying at %d",
                    micro,
                    math.ceil(len(labels) / self.accumulate),
                )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def _accumulated_step(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        micro = math.ceil(len(labels) / self.accumulate)
        total = torch.zeros((), device=self.device)
        for start in range(0, len(labels), micro):
            chunk = slice(start, start + micro)
            with autocast(self.device, self.settings.precision):
                logits = self.network(pixels[chunk])
            # Each micro-batch's mean loss, weighted by its share of the batch.
            loss = self.criterion(logits.float(), labels[chunk]) * (len(logits) / len(labels))
            self.scaler.scale(loss).backward()
            total += loss.detach()
        return float(total)

    # -- evaluation ------------------------------------------------------------------------

    def predict(self, dataset: LabelledImages) -> tuple[np.ndarray, np.ndarray]:
        """Logits of every decodable image of ``dataset`` (inference mode), and their labels."""
        loader = make_loader(
            dataset,
            batch_size=self.settings.batch_size,
            workers=self.settings.workers,
            pin_memory=self.device.type == "cuda",
        )
        was_training = self.network.training
        self.network.eval()
        logits, labels = [], []
        try:
            with torch.inference_mode(), autocast(self.device, self.settings.precision):
                for pixels, batch_labels, _ in loader:
                    if len(batch_labels):
                        out = self.network(pixels.to(self.device, non_blocking=True))
                        logits.append(out.float().cpu())
                        labels.append(batch_labels)
        finally:
            if was_training:  # back to training mode as the settings define it, not train(True)
                set_train_mode(self.network, self.settings.train_bn)
        if not logits:
            raise HeadstartError("no validation image could be decoded")
        return torch.cat(logits).numpy(), torch.cat(labels).numpy()

    def validate(self) -> EpochRecord:
        """The network's validation metrics as it stands (``epoch`` left 0)."""
        return self._evaluate_record(0)

    def _evaluate_record(self, epoch: int) -> EpochRecord:
        logits, labels = self.predict(self.val_set)
        scores = torch.from_numpy(logits)
        loss = nn.functional.cross_entropy(scores, torch.from_numpy(labels))
        classes = np.arange(logits.shape[1])
        metrics = score(labels, scores.softmax(dim=1).numpy(), classes)
        return EpochRecord(
            epoch=epoch,
            val_accuracy=metrics.accuracy,
            val_loss=float(loss),
            val_balanced_accuracy=metrics.balanced_accuracy,
            val_macro_f1=metrics.macro_f1,
        )
