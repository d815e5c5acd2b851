"""The one training loop: the teacher by maximum likelihood, the student by distillation.

:class:`Trainer` takes a model and an *objective* -- an
:class:`~wavedistill.objectives.base.Objective`: ``loss(model, batch) -> (scalar, {name: 0-dim
tensor})``, ``validate(model, batch) -> {name: float}``, ``log_media(model, batch) -> {name:
(T,) audio}`` and ``valid_metric``, the validation value that selects ``best.pt`` -- and runs
Adam with warm-up and decay, gradient clipping, EMA weights, bf16 autocast where the device
has it, validation, TensorBoard and checkpoints. The loop reads top to bottom in
:meth:`Trainer.fit`. The step's logs stay on the device until a log line is due, so a step
waits for the device only to decide whether its loss and gradient are finite.

A run folder (``--out``) holds::

    config.yaml                  the resolved config of the run
    checkpoints/step-000123.pt   the newest train.keep_last checkpoints (see checkpoint.py)
    checkpoints/best.pt          the lowest validation value so far
    validation.jsonl             one line per validation (appended)
    skipped.txt                  clips skipped as corrupted, when there were any
    tb/                          TensorBoard events: ``tensorboard --logdir EXP``

``--resume`` restores weights, EMA, optimiser, schedule, the float16 gradient scaler, RNG
states and the position in the data order, so a stopped and resumed run ends with the weights
of one that never stopped.

Faults: one run holds the folder at a time (runlock.py); SIGINT and SIGTERM finish the step,
save and raise :class:`~wavedistill.training.interrupt.Interrupted`; a full disk is one line
saying which checkpoint is intact (faults.py); a corrupted clip is skipped, named once and
listed in ``skipped.txt``, and more than ``data.max_corrupt_fraction`` of them stop the run
(datacheck.py).
A step whose loss or gradient is not finite is skipped (weights, EMA and schedule untouched)
and counted; ``train.max_bad_steps`` of them in a row stop the run.

Under ``torchrun`` (see :mod:`wavedistill.training.distributed`) the model is wrapped in
DistributedDataParallel: every rank reads its own share of each epoch's permutation, gradients
are averaged, and only rank 0 validates, logs and saves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from wavedistill.config import Config, audio_differences, config_to_dict, save_config
from wavedistill.data.corpora import SegmentDataset, collate
from wavedistill.data.datacheck import SKIPPED_NAME, SkipLog, corrupt_limit
from wavedistill.errors import UserError
from wavedistill.faults import WriteFailed, advice, explain
from wavedistill.fileio import append_text
from wavedistill.runlock import run_lock
from wavedistill.store.checkpoint import (
    BEST_NAME,
    ModelKind,
    capture_rng_state,
    latest_checkpoint,
    link_or_copy,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    step_name,
)
from wavedistill.store.loading import load_model, load_weights
from wavedistill.training.batches import BatchStream, DataFolder, valid_dataset
from wavedistill.training.distributed import Processes, autocast_dtype, gather
from wavedistill.training.eventlog import EventLog
from wavedistill.training.figures import mel_figure
from wavedistill.training.interrupt import Interrupted, StopRequest, signal_name
from wavedistill.training.optim import EMA, make_optimizer

if TYPE_CHECKING:
    from wavedistill.objectives.base import Objective

log = logging.getLogger(__name__)


VALIDATION_HISTORY = "validation.jsonl"  # in the run folder, one line per validation


class TrainingDiverged(UserError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class _ObjectiveLoss(nn.Module):
    """The objective's loss as a module's forward, so DistributedDataParallel wraps the whole
    loss computation and the objective may call any method of the bare model."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self._loss = objective.loss  # a bound method: not registered as a submodule

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self._loss(self.model, batch)


class Trainer:
    """Trains ``model`` (kind ``"teacher"`` or ``"student"``) on ``objective``; see the module
    docstring. :meth:`run` picks the starting point (fresh, ``resume``, ``init_from``) and
    calls :meth:`fit`, the loop."""

    def __init__(
        self,
        kind: ModelKind,
        model: nn.Module,
        objective: Objective,
        cfg: Config,
        data: DataFolder,
        out_dir: str | Path,
        procs: Processes,
        device: torch.device,
    ):
        self.kind, self.cfg, self.data, self.procs, self.device = kind, cfg, data, procs, device
        self.out_dir = Path(out_dir)
        self.objective = objective
        self.model = model.to(device)
        self.ema = EMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg.train)
        self.loss_fn = self._wrap(_ObjectiveLoss(self.model, objective))
        self.amp_dtype = autocast_dtype(cfg.train.precision, device)
        # float16's narrow range needs the loss scaled up and the gradients back down
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed segment shapes: autotune once
        self.train_data = BatchStream(
            SegmentDataset(data.path, "train", cfg, data.stats),
            cfg,
            procs,
            pin_memory=device.type == "cuda",
        )
        self.valid_data = valid_dataset(data, cfg)
        self.skipped = self._skip_log()
        self.train_data.skipped = self.skipped
        self._valid_cache: list[dict[str, Tensor]] | None = None
        self.stop = StopRequest()
        self._saved_step: int | None = None
        self.step = 0
        self.best_valid: float | None = None
        self.bad_in_row, self.bad_total = 0, 0
        self._started = time.monotonic()
        self.writer: EventLog | None = None  # open during fit() on the main process

    def _skip_log(self) -> SkipLog:
        """Where corrupted clips of both splits are reported (``skipped.txt`` by rank 0)."""
        total = len(self.train_data.dataset) + (len(self.valid_data) if self.valid_data else 0)
        listing = self.out_dir / SKIPPED_NAME if self.procs.is_main else None
        fraction = self.cfg.data.max_corrupt_fraction
        return SkipLog(
            listing,
            self.data.path,
            total,
            corrupt_limit(fraction, total),
            f"data.max_corrupt_fraction = {fraction:g}",
        )

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.procs.distributed:
            return module

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation, media and synthesis use: EMA when enabled."""
        return self.ema.model if self.ema is not None else self.model

    # -- starting points -------------------------------------------------------------------

    def resume_from(self, path: str | Path) -> None:
        """Continue the run saved in ``path``: weights, EMA, optimiser, schedule, step, best
        value, data position and (last, so nothing disturbs them) the RNG states."""
        ckpt = load_checkpoint(path, expected_kind=self.kind)
        _check_same_model(ckpt, self.cfg, self.kind)
        load_weights(self.model, ckpt["model"], str(path))
        if self.ema is not None:
            load_weights(self.ema.model, ckpt.get("ema") or ckpt["model"], str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") and self.scaler.is_enabled():  # float16: the same loss scale
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best_valid = int(ckpt["step"]), ckpt.get("best_valid")
        self.bad_total = int(ckpt.get("skipped_steps", 0))
        self.train_data.restore(ckpt["data_state"])
        self._restore_rng(ckpt.get("rng") or [], path)
        log.info("resumed from %s at step %d", path, self.step)

    def _restore_rng(self, states: list[dict], path: str | Path) -> None:
        if len(states) == self.procs.world_size:
            restore_rng_state(states[self.procs.rank])
            return
        log.warning(
            "%s holds RNG states of %d process(es), this run has %d: reseeding",
            path,
            len(states),
            self.procs.world_size,
        )
        seed_everything(self.cfg.train.seed + 7919 * self.step + self.procs.rank)

    def init_from(self, path: str | Path) -> None:
        """Start from the weights (only) of another model of the same kind: a checkpoint's raw
        weights, or those of a bundle folder or of any other model reference ``load_model``
        reads (a shipped model's name, a Hub id)."""
        source = load_model(path, self.kind, use_ema=False)
        load_weights(self.model, source.model.state_dict(), str(path))
        if self.ema is not None:
            self.ema.reset(self.model)
        log.info("initialised weights from %s", path)

    def run(self, resume: bool = False, init_from: str | Path | None = None) -> Trainer:
        """Hold the run folder, pick the starting point (a fresh run refuses a folder that
        holds checkpoints), write the run's ``config.yaml``, train. Returns ``self``.
        A full disk, a signal and corrupted clips end the run as the module docstring says."""
        if resume and init_from is not None:
            raise UserError("give --resume or --init-from, not both")
        command = {"teacher": "train-teacher", "student": "distill"}[self.kind]
        lock = run_lock(self.out_dir, command) if self.procs.is_main else contextlib.nullcontext()
        with explain(self._intact), lock, self.stop:
            try:
                self._start(resume, init_from)
            finally:
                summary = self.skipped.summary()
                if summary and self.procs.is_main:
                    log.warning("%s", summary)
        return self

    def _intact(self, exc: WriteFailed) -> str:
        """What a failed write left: the newest checkpoint, and how to go on."""
        last = latest_checkpoint(self.out_dir)
        if last is None:
            return "no checkpoint written yet; " + advice(exc, "run the same command again")
        return f"{last.name} is intact; " + advice(exc, "run again with --resume")

    def _start(self, resume: bool, init_from: str | Path | None) -> None:
        existing = latest_checkpoint(self.out_dir)
        if resume:
            if existing is None:
                raise UserError(f"--resume: {self.checkpoint_dir} holds no step-N.pt checkpoint")
            self.resume_from(existing)
        else:
            if existing is not None:
                raise UserError(
                    f"{self.out_dir}: already holds checkpoints ({existing.name}); "
                    "pass --resume to continue that run or choose another --out"
                )
            if init_from is not None:
                self.init_from(init_from)
            seed_everything(self.cfg.train.seed + 1 + self.procs.rank)  # own noise per rank
        if self.procs.is_main:
            save_config(self.cfg, self.out_dir / "config.yaml")
        self.fit()

    # -- the loop --------------------------------------------------------------------------

    def fit(self) -> None:
        """Train until ``train.steps`` updates, validating, logging and saving on schedule;
        the last step always validates and saves."""
        total = self.cfg.train.steps
        meter, bar = _Meter(), self._progress_bar()
        budget = _Budget(self.cfg.train.max_minutes, self.procs, self.device)
        self._started = time.monotonic()
        with contextlib.closing(bar), self._tensorboard():  # an error starts on its own line
            if self.step == 0 and self.procs.is_main:
                self.validate()  # the starting point: the curve then shows what training gains
            while self.step < total:
                batch = self._to_device(self.train_data.next())
                result = self.train_step(batch)
                if result is None:
                    continue
                self.step += 1
                final = self.step == total or budget.spent()
                meter.add(result, batch["audio"].numel() * self.procs.world_size)
                bar.update(1)
                self._log_step(meter, bar, final=final)
                with meter.paused():
                    self._after_step(final=final)
                if final:
                    break
                if self._stop_requested():
                    self._save_and_stop()
        if self.step < total:  # the loop ends early only when the clock ran out
            log.info(
                "stopped at step %d: train.max_minutes (%g) reached",
                self.step,
                self.cfg.train.max_minutes,
            )

    def _stop_requested(self) -> bool:
        """A signal asked to stop (on any rank: every rank stops after the same step)."""
        if not self.procs.distributed:
            return self.stop.requested
        flag = torch.tensor(float(self.stop.requested), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _save_and_stop(self) -> None:
        """Save the step just finished (unless it was saved) and raise :class:`Interrupted`."""
        if self._saved_step != self.step:
            self.save(step_file=True, best=False)
        signum = self.stop.signum or 2  # another rank's signal: report it as an interruption
        raise Interrupted(
            signum,
            f"interrupted by {signal_name(signum)} at step {self.step} of "
            f"{self.cfg.train.steps}: saved "
            f"{self.checkpoint_dir / step_name(self.step)}",
        )

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """One update; returns the step's metrics (0-dim tensors, still on the device), or None
        when the step was skipped because the loss or the gradient was not finite (on any
        rank). The finiteness decision is the step's one wait for the device."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, logs = self.loss_fn(batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not self._finite(loss.detach(), grad_norm):
            if self.scaler.is_enabled() and bool(torch.isfinite(loss.detach())):
                self.scaler.update()  # a float16 overflow: the scale shrinks, nothing diverged
                self.optimizer.zero_grad(set_to_none=True)
                return None
            self._skip_step()
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.bad_in_row = 0
        return {"loss": loss.detach().float(), "grad_norm": grad_norm.detach().float(), **logs}

    def _log_step(self, meter: _Meter, bar, final: bool) -> None:
        if self.procs.is_main and (self.step % self.cfg.train.log_every == 0 or final):
            self._log_train(meter.pop(), bar)

    def _after_step(self, final: bool) -> None:
        """Validation, media and checkpoints, each on its own schedule."""
        t = self.cfg.train
        value = None
        if self.procs.is_main and (self.step % t.valid_every == 0 or final):
            value = self.validate()
        if t.audio_every > 0 and self.procs.is_main and (self.step % t.audio_every == 0 or final):
            self.log_media()
        best = self._improved(value)
        if best:
            self.best_valid = value
        if self.step % t.checkpoint_every == 0 or final:
            # Without a validation split, best.pt is simply the newest checkpoint.
            self.save(
                step_file=True, best=best or (self.procs.is_main and not self._valid_batches())
            )
        elif best:
            self.save(step_file=False, best=True)

    # -- steps and their checks ------------------------------------------------------------

    def _finite(self, loss: Tensor, grad_norm: Tensor) -> bool:
        ok = torch.stack([loss.float(), grad_norm.float()]).isfinite().all().float()
        if self.procs.distributed:  # every rank must take the same decision
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_row += 1
        self.bad_total += 1
        if self.procs.is_main:
            log.warning(
                "step %d skipped: non-finite loss or gradient (%d in a row, %d in all)",
                self.step + 1,
                self.bad_in_row,
                self.bad_total,
            )
            if self.writer is not None:
                self.writer.add_scalar("train/skipped_steps", self.bad_total, self.step)
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            last = latest_checkpoint(self.out_dir)
            raise TrainingDiverged(
                f"training diverged: {self.bad_in_row} consecutive steps after step {self.step} "
                f"had a non-finite loss or gradient (train.max_bad_steps); lower "
                f"train.learning_rate or check the data; last checkpoint: {last or 'none'}"
            )

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
            for k, v in batch.items()
        }

    # -- validation and media --------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean of ``objective.validate`` over ``train.valid_batches`` held-out batches with the
        EMA weights; logged under ``valid/``. Returns the value that selects ``best.pt``."""
        batches = self._valid_batches()
        if not batches:
            return None
        totals: dict[str, float] = {}
        model = self.eval_model
        was_training = model.training
        model.eval()
        with _isolated_rng(self.cfg.train.seed), self._autocast():
            for batch in batches:  # batch means, weighted by size: the last may be short
                size = batch["audio"].shape[0]
                for key, value in self.objective.validate(model, batch).items():
                    totals[key] = totals.get(key, 0.0) + float(value) * size
        model.train(was_training)
        count = sum(batch["audio"].shape[0] for batch in batches)
        means = {k: v / count for k, v in totals.items()}
        if self.writer is not None:
            for key, value in means.items():
                self.writer.add_scalar(f"valid/{key}", value, self.step)
        self._append_history(means)
        key = self.objective.valid_metric
        log.info(
            "step %d validation: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in means.items())
        )
        return means[key]

    def _append_history(self, means: dict[str, float]) -> None:
        """One line per validation in ``<out>/validation.jsonl`` (``{"step", "minutes",
        metrics...}``): the learning curve as a plain file, for reports and plots."""
        minutes = (time.monotonic() - self._started) / 60.0
        line = json.dumps({"step": self.step, "minutes": round(minutes, 3), **means})
        append_text(self.out_dir / VALIDATION_HISTORY, line + "\n")

    def _valid_batches(self) -> list[dict[str, Tensor]]:
        """The first ``train.valid_batches`` batches of the validation split, read once and
        kept on the device: every validation sees the same segments."""
        if self._valid_cache is None:
            self._valid_cache = self._read_valid_batches()
        return self._valid_cache

    def _read_valid_batches(self) -> list[dict[str, Tensor]]:
        if self.valid_data is None or len(self.valid_data) == 0:
            return []
        size, n = self.cfg.data.batch_size, len(self.valid_data)
        batches = []
        for start in range(0, min(n, size * self.cfg.train.valid_batches), size):
            batch = collate([self.valid_data[i] for i in range(start, min(start + size, n))])
            for path, reason in batch.pop("corrupt", ()):
                self.skipped.record(path, reason)
            if "audio" in batch:
                batches.append(self._to_device(batch))
        return batches

    @torch.no_grad()
    def log_media(self) -> None:
        """Audio from ``objective.log_media`` and mel figures of it and of the reference clip,
        written to TensorBoard."""
        batches = self._valid_batches()[:1]
        if not batches or self.writer is None:
            return
        batch = {k: v[:1] if isinstance(v, Tensor) else v for k, v in batches[0].items()}
        sr = self.cfg.audio.sample_rate
        clips = {"reference": batch["audio"][0]}
        with _isolated_rng(self.cfg.train.seed):
            clips.update(self.objective.log_media(self.eval_model, batch))
        for name, clip in clips.items():
            clip = clip.detach().float().cpu().reshape(-1).clamp(-1, 1)
            self.writer.add_audio(f"audio/{name}", clip, self.step, sample_rate=sr)
            figure = mel_figure(clip, self.cfg)
            if figure is not None:  # None: too short for one mel frame
                self.writer.add_figure(f"mel/{name}", figure, self.step)

    # -- checkpoints -----------------------------------------------------------------------

    def _improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return self.best_valid is None or value < self.best_valid

    def save(self, step_file: bool, best: bool) -> None:
        """Write ``step-N.pt`` (collective: every rank contributes its RNG state) and/or
        ``best.pt`` (rank 0 only), then keep only the newest ``train.keep_last``."""
        rng = gather(capture_rng_state(), self.procs) if step_file else [capture_rng_state()]
        if not self.procs.is_main:
            return
        payload = self.payload(rng)
        best_path = self.checkpoint_dir / BEST_NAME
        if step_file:
            path = save_checkpoint(self.checkpoint_dir / step_name(self.step), payload)
            self._saved_step = self.step
            # only now, with the new one on disk: a failed save above kept every older one
            prune_checkpoints(self.checkpoint_dir, self.cfg.train.keep_last)
            if best:
                link_or_copy(path, best_path)
        elif best:
            save_checkpoint(best_path, payload)

    def payload(self, rng: list[dict]) -> dict[str, Any]:
        """Everything a checkpoint holds (see checkpoint.py)."""
        return {
            "kind": self.kind,
            "config": config_to_dict(self.cfg),
            "stats": self.data.stats.to_dict(),
            "model": _cpu_state(self.model),
            "ema": _cpu_state(self.ema.model) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": rng,
            "data_state": self.train_data.state(),
            "best_valid": self.best_valid,
            "speakers": self.data.speakers,
            "skipped_steps": self.bad_total,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    # -- logging ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tensorboard(self):
        if self.procs.is_main:
            self.writer = EventLog(self.out_dir / "tb")
        try:
            yield
        except BaseException:
            if self.writer is not None:  # the error on its way out is the one to report
                self.writer.close(quiet=True)
            raise
        else:
            if self.writer is not None:
                self.writer.close()
        finally:
            self.writer = None

    def _progress_bar(self):
        return tqdm(
            total=self.cfg.train.steps,
            initial=self.step,
            desc=f"train {self.kind}",
            unit="step",
            dynamic_ncols=True,
            disable=not self.procs.is_main,
        )

    def _log_train(self, means: dict[str, float], bar) -> None:
        lr = self.scheduler.get_last_lr()[0]
        if self.writer is not None:
            for key, value in means.items():
                self.writer.add_scalar(f"train/{key}", value, self.step)
            self.writer.add_scalar("train/learning_rate", lr, self.step)
        bar.set_postfix(
            loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{means['samples_per_s']:.0f}"
        )
        log.debug("step %d: %s", self.step, means)


def _check_same_model(ckpt: dict[str, Any], cfg: Config, kind: ModelKind) -> None:
    """A resumed run may change training settings, not the model or its features."""
    stored, wanted = ckpt["config"], config_to_dict(cfg)
    differ = audio_differences(stored.get("audio", {}), cfg.audio)
    # a key the stored config predates (e.g. teacher.source) holds its default
    section = {**config_to_dict(Config())[kind], **stored.get(kind, {})}
    differ += [
        f"{kind}.{key} {section.get(key)!r} vs {value!r}"
        for key, value in wanted[kind].items()
        if section.get(key) != value
    ]
    if differ:
        raise UserError(
            f"{ckpt['path']}: was trained with another model config "
            f"({', '.join(differ)}); --resume needs the same"
        )


# -- small helpers ---------------------------------------------------------------------------


class _Budget:
    """``train.max_minutes`` of wall time from the start of :meth:`Trainer.fit`; every rank
    takes rank 0's decision, so all stop after the same step."""

    def __init__(self, minutes: float, procs: Processes, device: torch.device):
        self.deadline = time.monotonic() + 60.0 * minutes if minutes > 0 else None
        self.procs, self.device = procs, device
        self._spent = False

    def spent(self) -> bool:
        if self.deadline is None or self._spent:
            return self._spent
        over = time.monotonic() >= self.deadline
        if self.procs.distributed:  # a collective (and a wait for the device) only when needed
            decision = torch.tensor(float(over), device=self.device)
            dist.broadcast(decision, src=0)
            over = bool(decision.item())
        self._spent = over
        return self._spent


class _Meter:
    """Means of step metrics between two log lines, and audio samples per second.

    Step metrics are 0-dim tensors on the device (plain floats are accepted too); they are
    summed there and copied to the host once per log line, so logging makes no step wait for
    the device."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.steps, self.samples, self.start = 0, 0, time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Leave the block's time (validation, media, saving) out of the throughput."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - start

    def add(self, metrics: dict[str, Any], samples: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, Tensor):  # float32 sums: bf16 logs would round the means
                value = value.detach().float()
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.samples += samples

    def pop(self) -> dict[str, float]:
        """The means since the last call (one device-to-host copy for all of them) and
        ``samples_per_s``; starts the next interval."""
        sums = {
            **self.sums,
            **_to_host({k: v for k, v in self.sums.items() if isinstance(v, Tensor)}),
        }
        means = {k: float(v) / max(1, self.steps) for k, v in sums.items()}
        means["samples_per_s"] = self.samples / max(1e-9, time.perf_counter() - self.start)
        self._reset()
        return means


def _to_host(values: dict[str, Tensor]) -> dict[str, float]:
    """0-dim tensors as floats, in one transfer: ``{name: () tensor} -> {name: float}``."""
    if not values:
        return {}
    device = next(iter(values.values())).device
    stacked = torch.stack([v.to(device, torch.float32).reshape(()) for v in values.values()])
    return dict(zip(values, stacked.tolist(), strict=True))


def seed_everything(seed: int) -> None:
    """Seed every generator the run draws from: torch (CPU and CUDA), numpy, random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def _isolated_rng(seed: int):
    """Run the block with every generator seeded to ``seed`` (the same noise at every
    validation, so values are comparable) and leave the training streams untouched."""
    state = capture_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        restore_rng_state(state)


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
