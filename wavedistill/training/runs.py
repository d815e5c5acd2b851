"""The training entry points: ``train_teacher`` (maximum likelihood) and ``train_student``
(distillation from a teacher checkpoint), each a checked dataset folder, a model, an objective
and one :class:`~wavedistill.training.loop.Trainer` run (see loop.py for the loop and the run
folder it writes).

The pieces live in their own modules: :mod:`wavedistill.training.optim` (schedule, Adam, EMA),
:mod:`wavedistill.training.distributed` (torchrun processes, device, precision),
:mod:`wavedistill.training.batches` (dataset folder, data order, batches),
:mod:`wavedistill.training.loop` (the loop, validation, checkpoints),
:mod:`wavedistill.training.figures` (TensorBoard figures).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from wavedistill.config import Config
from wavedistill.data.features import FeatureStats
from wavedistill.data.pitch import check_pitch_labels
from wavedistill.errors import UserError
from wavedistill.models.excitation import inherit_predictor
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.distillation import Distillation, check_teacher_compatible
from wavedistill.objectives.likelihood import MaximumLikelihood
from wavedistill.store.loading import load_model
from wavedistill.training.batches import DataFolder, open_data_folder
from wavedistill.training.distributed import distributed_processes
from wavedistill.training.loop import Trainer, seed_everything

log = logging.getLogger(__name__)


def train_teacher(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    init_from: str | Path | None = None,
    device: str | None = None,
) -> Trainer:
    """Train a :class:`~wavedistill.models.teacher.WaveNetTeacher` by maximum likelihood on a
    preprocessed dataset folder; returns the finished :class:`Trainer`."""
    data = open_data_folder(data_dir, cfg)
    _check_speakers(data, cfg.teacher.num_speakers, "teacher.num_speakers")
    if cfg.teacher.source != "none":
        check_pitch_labels(data.path, cfg.teacher.source)
    with distributed_processes(device) as (procs, dev):
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        model = WaveNetTeacher.from_config(cfg)
        media_samples = round(cfg.train.audio_seconds * cfg.audio.sample_rate)
        locked = cfg.teacher.source_phase == "locked"
        objective = MaximumLikelihood(media_samples, cfg.teacher.pitch_weight, locked)
        trainer = Trainer("teacher", model, objective, cfg, data, out_dir, procs, dev)
        return trainer.run(resume=resume, init_from=init_from)


def train_student(
    cfg: Config,
    teacher_ckpt: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    init_from: str | Path | None = None,
    device: str | None = None,
) -> Trainer:
    """Distil the teacher in ``teacher_ckpt`` (EMA weights, frozen) into an
    :class:`~wavedistill.models.student.IAFStudent`. The teacher's feature statistics are
    authoritative: they normalise the data and travel in the student's checkpoints, and the
    teacher's config section is recorded in the student's config."""
    loaded = load_model(teacher_ckpt, "teacher")
    teacher, teacher_cfg, teacher_stats = loaded.model, loaded.cfg, loaded.feature_stats
    check_teacher_compatible(teacher_cfg, cfg)
    cfg = dataclasses.replace(cfg, teacher=teacher_cfg.teacher)
    data = _with_teacher_stats(open_data_folder(data_dir, cfg), teacher_stats, teacher_ckpt)
    _check_speakers(data, cfg.student.num_speakers, "student.num_speakers")
    with distributed_processes(device) as (procs, dev):
        teacher = teacher.to(dev).eval().requires_grad_(False)
        seed_everything(cfg.train.seed)
        student = IAFStudent.from_config(cfg)
        inherit_predictor(student, teacher)  # the same excitation as the teacher's, frozen
        objective = Distillation(teacher, cfg)
        trainer = Trainer("student", student, objective, cfg, data, out_dir, procs, dev)
        return trainer.run(resume=resume, init_from=init_from)


def _check_speakers(data: DataFolder, num_speakers: int, key: str) -> None:
    """Refuse a folder with more speakers than the model embeds (``key`` names the setting)."""
    if num_speakers > 0 and len(data.speakers) > num_speakers:
        raise UserError(
            f"{data.path / 'speakers.json'}: {len(data.speakers)} speakers, but "
            f"{key} is {num_speakers}"
        )


def _with_teacher_stats(
    data: DataFolder, stats: FeatureStats, teacher_ckpt: str | Path
) -> DataFolder:
    """``data`` normalised by the teacher's statistics, warning when they are not its own."""
    same = (
        data.stats.mean.shape == stats.mean.shape
        and torch.allclose(data.stats.mean.float(), stats.mean.float(), atol=1e-4)
        and torch.allclose(data.stats.std.float(), stats.std.float(), atol=1e-4)
    )
    if not same:
        log.warning(
            "%s: feature statistics differ from the teacher's (%s); normalising with "
            "the teacher's, as the teacher was trained with them",
            data.path,
            teacher_ckpt,
        )
    return dataclasses.replace(data, stats=stats)
