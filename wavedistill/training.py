"""The one training loop: the teacher by maximum likelihood, the student by distillation.

:class:`Trainer` takes a model and an *objective* -- any object with
``loss(model, batch) -> (scalar, {name: float})`` and ``validate(model, batch) -> {name: float}``
(optionally ``log_media(model, batch) -> {name: (T,) audio}``) -- and runs Adam with warm-up and
decay, gradient clipping, EMA weights, bf16 autocast where the device has it, validation,
TensorBoard and checkpoints. The loop reads top to bottom in :meth:`Trainer.fit`.

A run folder (``--out``) holds::

    config.yaml                  the resolved config of the run
    checkpoints/step-000123.pt   the newest train.keep_last checkpoints (see checkpoint.py)
    checkpoints/best.pt          the lowest validation value so far
    tb/                          TensorBoard events: ``tensorboard --logdir EXP``

``--resume`` restores weights, EMA, optimiser, schedule, RNG states and the position in the
data order, so a stopped and resumed run ends with the weights of one that never stopped.
A step whose loss or gradient is not finite is skipped (weights, EMA and schedule untouched)
and counted; ``train.max_bad_steps`` of them in a row stop the run.

Launched by ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``) the same command trains with
DistributedDataParallel (NCCL on GPUs, gloo on CPU): every rank reads its own share of each
epoch's permutation, gradients are averaged, and only rank 0 validates, logs and saves.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from wavedistill.checkpoint import (
    BEST_NAME,
    capture_rng_state,
    latest_checkpoint,
    link_or_copy,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    step_name,
)
from wavedistill.config import Config, TrainConfig, config_to_dict, read_yaml, save_config
from wavedistill.errors import UserError

log = logging.getLogger(__name__)


VALIDATION_HISTORY = "validation.jsonl"  # in the run folder, one line per validation


class TrainingDiverged(UserError):
    """Too many consecutive steps had a non-finite loss or gradient."""


# -- learning-rate schedule ------------------------------------------------------------------


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of ``train.learning_rate`` for update ``step`` (0-based): linear warm-up over
    ``warmup_steps`` updates, then ``exponential`` (``decay_rate`` per ``decay_steps``),
    ``cosine`` (from 1 at the end of warm-up to 0 at ``train.steps``) or ``none``."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    progress = step - train.warmup_steps
    if train.decay == "exponential":
        return train.decay_rate ** (progress / train.decay_steps)
    if train.decay == "cosine":
        span = max(1, train.steps - train.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress / span)))
    return 1.0


def make_optimizer(model: nn.Module, train: TrainConfig):
    """Adam over the trainable parameters, with its warm-up/decay ``LambdaLR`` schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=train.learning_rate, betas=tuple(train.betas),
                                 weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train))
    return optimizer, scheduler


# -- EMA weights -----------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's weights, kept as a frozen copy of the model
    (``ema.model``) that validation and synthesis use.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
    averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        decay = min(self.decay, (1 + num_updates) / (10 + num_updates))
        ema = [p for p in self.model.parameters()]
        raw = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, raw, 1.0 - decay)  # ema += (1 - decay) * (raw - ema)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current weights."""
        self.model.load_state_dict(model.state_dict())


# -- distributed setup -----------------------------------------------------------------------


@dataclass
class Processes:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@contextlib.contextmanager
def distributed_processes(device: str | None) -> Iterator[tuple[Processes, torch.device]]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE > 1``) or
    run alone; yields ``(Processes, device)`` and leaves the group on exit."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        procs = _current_processes()
        yield procs, _pick_device(device, procs)
        return
    procs = Processes(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    dev = _pick_device(device, procs)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    try:
        yield procs, dev
    finally:
        dist.destroy_process_group()


def _current_processes() -> Processes:
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(),
                         int(os.environ.get("LOCAL_RANK", "0")))
    return Processes()


def _pick_device(device: str | None, procs: Processes) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", procs.local_rank)  # one GPU per process under torchrun
    return dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device`` (None = plain float32).
    ``auto`` picks bf16 on GPUs that support it and float32 elsewhere."""
    if precision == "float32":
        return None
    supported = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    if precision == "bfloat16":
        if not supported:
            raise UserError(f"train.precision=bfloat16: {device} does not support bfloat16")
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and supported else None


# -- data ------------------------------------------------------------------------------------


@dataclass
class DataFolder:
    """A checked preprocessed dataset folder: its path, feature statistics and speakers."""

    path: Path
    stats: Any  # wavedistill.features.FeatureStats
    speakers: dict[str, int]


def open_data_folder(data_dir: str | Path, cfg: Config) -> DataFolder:
    """Check that ``data_dir`` was written by ``preprocess`` with this config's audio
    settings and read its statistics and speaker map."""
    from wavedistill.features import FeatureStats

    path = Path(data_dir)
    for name in ("config.yaml", "stats.npz", "train.jsonl"):
        if not (path / name).is_file():
            raise UserError(f"{path}: not a dataset folder (no {name}); "
                            "run `wavedistill preprocess`")
    stored = read_yaml(path / "config.yaml").get("audio", {})
    wanted = config_to_dict(cfg)["audio"]
    differ = sorted(k for k in wanted if stored.get(k) != wanted[k])
    if differ:
        detail = ", ".join(f"audio.{k} {stored.get(k)!r} vs {wanted[k]!r}" for k in differ)
        raise UserError(f"{path / 'config.yaml'}: features were made with other audio settings "
                        f"than this config ({detail}); preprocess again or match the config")
    speakers = _read_speakers(path / "speakers.json")
    return DataFolder(path, FeatureStats.load(path / "stats.npz"), speakers)


def _read_speakers(path: Path) -> dict[str, int]:
    import json

    if not path.exists():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError):
        raise UserError(f"{path}: not a JSON object of speaker ids") from None


class ShardedBatchSampler:
    """Batches of dataset indices in a fresh permutation per epoch, drawn from
    ``seed + epoch`` alone, so every rank computes the same order and takes the slice
    ``rank::world_size`` of it; ranks get equally many full batches. Iteration starts at batch
    ``start`` of the epoch, which is how a resumed run continues mid-epoch."""

    def __init__(self, size: int, batch_size: int, seed: int, procs: Processes):
        self.size, self.batch_size, self.seed, self.procs = size, batch_size, seed, procs
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.size // self.procs.world_size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        rank, world = self.procs.rank, self.procs.world_size
        order = torch.randperm(self.size, generator=generator)[rank::world]
        for b in range(self.start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


class BatchStream:
    """Endless training batches, epoch after epoch, that knows where it is:
    ``(epoch, position)`` = batches already consumed in the current epoch."""

    def __init__(self, dataset, cfg: Config, procs: Processes, pin_memory: bool):
        from torch.utils.data import DataLoader

        from wavedistill.datasets import collate

        self.dataset = dataset
        self.sampler = ShardedBatchSampler(len(dataset), cfg.data.batch_size, cfg.train.seed, procs)
        if len(self.sampler) == 0:
            raise UserError(f"the train split has {len(dataset)} items: fewer than data.batch_size "
                            f"({cfg.data.batch_size}) x {procs.world_size} process(es)")
        # A private generator: creating an iterator must not consume the global RNG, or a
        # resumed run (which creates one mid-epoch) would drift from an uninterrupted one.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.data.num_workers, pin_memory=pin_memory,
                                 generator=torch.Generator().manual_seed(cfg.train.seed))
        self.epoch, self.position = 0, 0
        self._iterator: Iterator | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None

    def next(self) -> dict[str, Tensor]:
        if self._iterator is None:
            self._start_epoch()
        batch = next(self._iterator, None)
        if batch is None:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._iterator)
        self.position += 1
        return batch

    def _start_epoch(self) -> None:
        self.dataset.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.position)
        self._iterator = iter(self.loader)


# -- the trainer -----------------------------------------------------------------------------


class _ObjectiveLoss(nn.Module):
    """The objective's loss as a module's forward, so DistributedDataParallel wraps the whole
    loss computation and the objective may call any method of the bare model."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self._loss = objective.loss  # a bound method: not registered as a submodule

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return self._loss(self.model, batch)


class Trainer:
    """Trains ``model`` (kind ``"teacher"`` or ``"student"``) on ``objective``; see the module
    docstring. :meth:`run` picks the starting point (fresh, ``resume``, ``init_from``) and
    calls :meth:`fit`, the loop."""

    def __init__(self, kind: str, model: nn.Module, objective, cfg: Config, data: DataFolder,
                 out_dir: str | Path, procs: Processes, device: torch.device):
        from wavedistill.datasets import SegmentDataset

        self.kind, self.cfg, self.data, self.procs, self.device = kind, cfg, data, procs, device
        self.out_dir = Path(out_dir)
        self.objective = objective
        self.model = model.to(device)
        self.ema = EMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg.train)
        self.loss_fn = self._wrap(_ObjectiveLoss(self.model, objective))
        self.amp_dtype = autocast_dtype(cfg.train.precision, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed segment shapes: autotune once
        self.train_data = BatchStream(SegmentDataset(data.path, "train", cfg, data.stats), cfg,
                                      procs, pin_memory=device.type == "cuda")
        self.valid_data = _valid_dataset(data, cfg)
        self._valid_cache: list[dict[str, Tensor]] | None = None
        self.step, self.best_valid = 0, None
        self.bad_in_row, self.bad_total = 0, 0
        self._started = time.monotonic()
        self.writer = None

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.procs.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

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
        self.step, self.best_valid = int(ckpt["step"]), ckpt.get("best_valid")
        self.bad_total = int(ckpt.get("skipped_steps", 0))
        self.train_data.restore(ckpt["data_state"])
        self._restore_rng(ckpt.get("rng") or [], path)
        log.info("resumed from %s at step %d", path, self.step)

    def _restore_rng(self, states: list[dict], path: str | Path) -> None:
        if len(states) == self.procs.world_size:
            restore_rng_state(states[self.procs.rank])
            return
        log.warning("%s holds RNG states of %d process(es), this run has %d: reseeding",
                    path, len(states), self.procs.world_size)
        _seed_everything(self.cfg.train.seed + 7919 * self.step + self.procs.rank)

    def init_from(self, path: str | Path) -> None:
        """Start from the weights (only) of another checkpoint of the same kind."""
        ckpt = load_checkpoint(path, expected_kind=self.kind)
        load_weights(self.model, ckpt["model"], str(path))
        if self.ema is not None:
            self.ema.reset(self.model)
        log.info("initialised weights from %s", path)

    def run(self, resume: bool = False, init_from: str | Path | None = None) -> Trainer:
        """Pick the starting point (a fresh run refuses a folder that holds checkpoints),
        write the run's ``config.yaml``, train. Returns ``self``."""
        if resume and init_from is not None:
            raise UserError("give --resume or --init-from, not both")
        existing = latest_checkpoint(self.out_dir)
        if resume:
            if existing is None:
                raise UserError(f"--resume: {self.checkpoint_dir} holds no step-N.pt checkpoint")
            self.resume_from(existing)
        else:
            if existing is not None:
                raise UserError(f"{self.out_dir}: already holds checkpoints ({existing.name}); "
                                "pass --resume to continue that run or choose another --out")
            if init_from is not None:
                self.init_from(init_from)
            _seed_everything(self.cfg.train.seed + 1 + self.procs.rank)  # own noise per rank
        if self.procs.is_main:
            save_config(self.cfg, self.out_dir / "config.yaml")
        self.fit()
        return self

    # -- the loop --------------------------------------------------------------------------

    def fit(self) -> None:
        """Train until ``train.steps`` updates, validating, logging and saving on schedule;
        the last step always validates and saves."""
        total = self.cfg.train.steps
        meter, bar = _Meter(), self._progress_bar()
        budget = _Budget(self.cfg.train.max_minutes, self.procs, self.device)
        self._started = time.monotonic()
        with self._tensorboard():
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
        if self.step < total:  # the loop ends early only when the clock ran out
            log.info("stopped at step %d: train.max_minutes (%g) reached", self.step,
                     self.cfg.train.max_minutes)
        bar.close()

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """One update; returns the step's metrics, or None when the step was skipped because
        the loss or the gradient was not finite (on any rank)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, logs = self.loss_fn(batch)
        loss.backward()
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not self._finite(loss.detach(), grad_norm):
            self._skip_step()
            return None
        self.optimizer.step()
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
            self.save(step_file=True,
                      best=best or (self.procs.is_main and not self._valid_batches()))
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
            log.warning("step %d skipped: non-finite loss or gradient (%d in a row, %d in all)",
                        self.step + 1, self.bad_in_row, self.bad_total)
            if self.writer is not None:
                self.writer.add_scalar("train/skipped_steps", self.bad_total, self.step)
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            last = latest_checkpoint(self.out_dir)
            raise TrainingDiverged(
                f"training diverged: {self.bad_in_row} consecutive steps after step {self.step} "
                f"had a non-finite loss or gradient (train.max_bad_steps); lower "
                f"train.learning_rate or check the data; last checkpoint: {last or 'none'}")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
                for k, v in batch.items()}

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
        for key, value in means.items():
            self.writer.add_scalar(f"valid/{key}", value, self.step)
        self._append_history(means)
        key = getattr(self.objective, "valid_metric", None) or next(iter(means))
        log.info("step %d validation: %s", self.step,
                 ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
        return means[key]

    def _append_history(self, means: dict[str, float]) -> None:
        """One line per validation in ``<out>/validation.jsonl`` (``{"step", "minutes",
        metrics...}``): the learning curve as a plain file, for reports and plots."""
        minutes = (time.monotonic() - self._started) / 60.0
        line = json.dumps({"step": self.step, "minutes": round(minutes, 3), **means})
        with open(self.out_dir / VALIDATION_HISTORY, "a") as f:
            f.write(line + "\n")

    def _valid_batches(self) -> list[dict[str, Tensor]]:
        """The first ``train.valid_batches`` batches of the validation split, read once and
        kept on the device: every validation sees the same segments."""
        if self._valid_cache is None:
            self._valid_cache = self._read_valid_batches()
        return self._valid_cache

    def _read_valid_batches(self) -> list[dict[str, Tensor]]:
        from wavedistill.datasets import collate

        if self.valid_data is None or len(self.valid_data) == 0:
            return []
        size, n = self.cfg.data.batch_size, len(self.valid_data)
        batches = []
        for start in range(0, min(n, size * self.cfg.train.valid_batches), size):
            items = [self.valid_data[i] for i in range(start, min(start + size, n))]
            batches.append(self._to_device(collate(items)))
        return batches

    @torch.no_grad()
    def log_media(self) -> None:
        """Audio from ``objective.log_media`` (when it has one) and mel figures of it and of
        the reference clip, written to TensorBoard."""
        batches = self._valid_batches()[:1]
        media = getattr(self.objective, "log_media", None)
        if not batches or media is None:
            return
        batch = {k: v[:1] if isinstance(v, Tensor) else v for k, v in batches[0].items()}
        sr = self.cfg.audio.sample_rate
        clips = {"reference": batch["audio"][0]}
        with _isolated_rng(self.cfg.train.seed):
            clips.update(media(self.eval_model, batch))
        for name, clip in clips.items():
            clip = clip.detach().float().cpu().reshape(-1).clamp(-1, 1)
            self.writer.add_audio(f"audio/{name}", clip, self.step, sample_rate=sr)
            if clip.numel() > self.cfg.audio.n_fft // 2:  # else too short for one mel frame
                self.writer.add_figure(f"mel/{name}", _mel_figure(clip, self.cfg), self.step)

    # -- checkpoints -----------------------------------------------------------------------

    def _improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return self.best_valid is None or value < self.best_valid

    def save(self, step_file: bool, best: bool) -> None:
        """Write ``step-N.pt`` (collective: every rank contributes its RNG state) and/or
        ``best.pt`` (rank 0 only), then keep only the newest ``train.keep_last``."""
        rng = _gather(capture_rng_state(), self.procs) if step_file else [capture_rng_state()]
        if not self.procs.is_main:
            return
        payload = self.payload(rng)
        best_path = self.checkpoint_dir / BEST_NAME
        if step_file:
            path = save_checkpoint(self.checkpoint_dir / step_name(self.step), payload)
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
        }

    # -- logging ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tensorboard(self):
        if self.procs.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
        try:
            yield
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.cfg.train.steps, initial=self.step, desc=f"train {self.kind}",
                    unit="step", dynamic_ncols=True, disable=not self.procs.is_main)

    def _log_train(self, means: dict[str, float], bar) -> None:
        lr = self.scheduler.get_last_lr()[0]
        for key, value in means.items():
            self.writer.add_scalar(f"train/{key}", value, self.step)
        self.writer.add_scalar("train/learning_rate", lr, self.step)
        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}",
                        samples_s=f"{means['samples_per_s']:.0f}")
        log.debug("step %d: %s", self.step, means)



# -- entry points ----------------------------------------------------------------------------


def train_teacher(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
                  init_from: str | Path | None = None, device: str | None = None) -> Trainer:
    """Train a :class:`~wavedistill.teacher.WaveNetTeacher` by maximum likelihood on a
    preprocessed dataset folder; returns the finished :class:`Trainer`."""
    from wavedistill.teacher import MaximumLikelihood, WaveNetTeacher

    data = open_data_folder(data_dir, cfg)
    _check_speakers(data, cfg.teacher.num_speakers, "teacher.num_speakers")
    with distributed_processes(device) as (procs, dev):
        _seed_everything(cfg.train.seed)  # identical initial weights on every rank
        model = WaveNetTeacher.from_config(cfg)
        media_samples = round(cfg.train.audio_seconds * cfg.audio.sample_rate)
        trainer = Trainer("teacher", model, MaximumLikelihood(media_samples), cfg, data,
                          out_dir, procs, dev)
        return trainer.run(resume=resume, init_from=init_from)


def train_student(cfg: Config, teacher_ckpt: str | Path, data_dir: str | Path,
                  out_dir: str | Path, resume: bool = False, init_from: str | Path | None = None,
                  device: str | None = None) -> Trainer:
    """Distil the teacher in ``teacher_ckpt`` (EMA weights, frozen) into an
    :class:`~wavedistill.student.IAFStudent`. The teacher's feature statistics are
    authoritative: they normalise the data and travel in the student's checkpoints, and the
    teacher's config section is recorded in the student's config."""
    from wavedistill.checkpoint import build_model
    from wavedistill.distillation import Distillation, check_teacher_compatible
    from wavedistill.student import IAFStudent

    teacher, teacher_cfg, teacher_stats = build_model(load_checkpoint(teacher_ckpt, "teacher"))
    check_teacher_compatible(teacher_cfg, cfg)
    cfg = dataclasses.replace(cfg, teacher=teacher_cfg.teacher)
    data = _with_teacher_stats(open_data_folder(data_dir, cfg), teacher_stats, teacher_ckpt)
    _check_speakers(data, cfg.student.num_speakers, "student.num_speakers")
    with distributed_processes(device) as (procs, dev):
        teacher = teacher.to(dev).eval().requires_grad_(False)
        _seed_everything(cfg.train.seed)
        student = IAFStudent.from_config(cfg)
        objective = Distillation(teacher, cfg)
        trainer = Trainer("student", student, objective, cfg, data, out_dir, procs, dev)
        return trainer.run(resume=resume, init_from=init_from)


def _check_speakers(data: DataFolder, num_speakers: int, key: str) -> None:
    if num_speakers > 0 and len(data.speakers) > num_speakers:
        raise UserError(f"{data.path / 'speakers.json'}: {len(data.speakers)} speakers, but "
                        f"{key} is {num_speakers}")


def _with_teacher_stats(data: DataFolder, stats, teacher_ckpt: str | Path) -> DataFolder:
    same = (data.stats.mean.shape == stats.mean.shape
            and torch.allclose(data.stats.mean.float(), stats.mean.float(), atol=1e-4)
            and torch.allclose(data.stats.std.float(), stats.std.float(), atol=1e-4))
    if not same:
        log.warning("%s: feature statistics differ from the teacher's (%s); normalising with "
                    "the teacher's, as the teacher was trained with them", data.path, teacher_ckpt)
    return dataclasses.replace(data, stats=stats)


def _check_same_model(ckpt: dict[str, Any], cfg: Config, kind: str) -> None:
    """A resumed run may change training settings, not the model or its features."""
    stored, wanted = ckpt["config"], config_to_dict(cfg)
    differ = [f"{section}.{key} {stored.get(section, {}).get(key)!r} vs {value!r}"
              for section in ("audio", kind) for key, value in wanted[section].items()
              if stored.get(section, {}).get(key) != value]
    if differ:
        raise UserError(f"{ckpt['path']}: was trained with another model config "
                        f"({', '.join(differ)}); --resume needs the same")


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
        over = torch.tensor(float(time.monotonic() >= self.deadline), device=self.device)
        if self.procs.distributed:
            dist.broadcast(over, src=0)
        self._spent = bool(over.item())
        return self._spent


class _Meter:
    """Means of step metrics between two log lines, and audio samples per second."""

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
        for key, value in metrics.items():  # tensors stay on the device until logged
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.samples += samples

    def pop(self) -> dict[str, float]:
        means = {k: float(v) / max(1, self.steps) for k, v in self.sums.items()}
        means["samples_per_s"] = self.samples / max(1e-9, time.perf_counter() - self.start)
        self._reset()
        return means


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def _isolated_rng(seed: int):
    """Run the block with every generator seeded to ``seed`` (the same noise at every
    validation, so values are comparable) and leave the training streams untouched."""
    state = capture_rng_state()
    _seed_everything(seed)
    try:
        yield
    finally:
        restore_rng_state(state)


def _gather(state: dict[str, Any], procs: Processes) -> list[dict[str, Any]]:
    """Every rank's ``state``, in rank order (collective when distributed)."""
    if not procs.distributed:
        return [state]
    states: list[Any] = [None] * procs.world_size
    dist.all_gather_object(states, state)
    return states


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _valid_dataset(data: DataFolder, cfg: Config):
    from wavedistill.datasets import SegmentDataset

    if not (data.path / "valid.jsonl").is_file():
        log.warning("%s: no valid.jsonl; training without validation", data.path)
        return None
    dataset = SegmentDataset(data.path, "valid", cfg, data.stats)
    dataset.set_epoch(0)  # the same segments at every validation
    return dataset


def _mel_figure(clip: Tensor, cfg: Config):
    """A matplotlib figure of the log-mel spectrogram of ``clip`` (T,)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wavedistill.features import log_mel

    mel = log_mel(clip, cfg.audio).float().cpu().numpy()  # (n_mels, F)
    fig, ax = plt.subplots(figsize=(8, 3))
    image = ax.imshow(mel, origin="lower", aspect="auto", interpolation="none")
    ax.set_xlabel("frame")
    ax.set_ylabel("mel channel")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig
