"""Held-out evaluation of a teacher or a student checkpoint, written as a report folder.

``wavedistill evaluate --checkpoint CKPT --data DIR [--teacher CKPT] --out REPORT_DIR``:

- a **teacher** checkpoint: the negative log-likelihood of the validation split in bits per
  sample (every held-out utterance, whole; the total over all samples divided by their number),
  and teacher samples conditioned on the first ``--max-clips`` clips, cut to
  ``--teacher-seconds`` because sequential sampling is slow;
- a **student** checkpoint: copy-synthesis of each of the first ``--max-clips`` held-out clips
  from its own mel, compared with the original by every metric of
  :mod:`wavedistill.evaluation.metrics`;
  with ``--teacher``, also the KL(student || teacher) estimate of the distillation objective on
  the first ``data.segment_length`` samples of those clips, and teacher samples of the same
  clips as above, scored alike.

Every evaluation also scores **Griffin-Lim** (:mod:`wavedistill.evaluation.griffin_lim`,
``--griffin-lim-iters`` iterations, 32 by default; 0 leaves it out) from the same
unnormalised log-mel, with the same metrics on the same clips, and ``report.md`` says in
words on which metrics the student (or, for a teacher checkpoint, the teacher) beats it.
When teacher samples exist, the student is also scored on the teacher's spans
(``student_span``), so the two compare on equal audio. When the teacher's run folder holds
``validation.jsonl`` (written by the trainer), its held-out bits/sample are drawn against
steps in ``figures/teacher_nll.png``.

The clips are the validation split's, in manifest order (``--split all``: every utterance of
the folder, for a corpus the model never saw, such as another speaker's clips preprocessed with
the model's config). Models are conditioned on the
dataset's log-mel normalised by the checkpoint's own feature statistics.

The report folder holds ``metrics.json`` (every number, per clip and averaged), ``report.md``
(a summary table), ``index.html`` (the listening page, :mod:`wavedistill.evaluation.listening_page`:
players and spectrograms of every clip, beside ``audio/`` and ``spectrograms/``) and
``figures/<clip>.png`` (log-mel of the original, the teacher sample and the
student's synthesis, one above the other, for the first few clips). A metric without a value
(a silent clip for PESQ, the ``metrics`` extra not installed) is reported with the reason.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wavedistill.config import Config, audio_differences, config_to_dict, load_config
from wavedistill.data.corpora import SegmentDataset, collate
from wavedistill.data.datacheck import SKIPPED_NAME, SkipLog
from wavedistill.data.features import FeatureStats, frames_for
from wavedistill.errors import UserError
from wavedistill.evaluation.griffin_lim import griffin_lim
from wavedistill.evaluation.listening_page import write_listening_page
from wavedistill.evaluation.plots import draw_figures, plot_nll_curve
from wavedistill.evaluation.report import write_report
from wavedistill.evaluation.results import Clip, Results, score
from wavedistill.models.sampling import generate
from wavedistill.models.student import check_temperature
from wavedistill.objectives.distillation import Distillation, check_teacher_compatible
from wavedistill.store.loading import LoadedModel, load_model

log = logging.getLogger(__name__)

SEED = 0  # noise of every synthesis, so that two evaluations of a checkpoint agree


# -- loading ---------------------------------------------------------------------------------


def check_dataset(data_dir: Path, cfg: Config, source: str | Path) -> None:
    """The dataset's features must be the ones the model was trained on."""
    config = data_dir / "config.yaml"
    if not config.is_file():
        raise UserError(
            f"{data_dir}: not a dataset folder (no config.yaml); run `wavedistill preprocess`"
        )
    differ = audio_differences(load_config(config).audio, cfg.audio)
    if differ:
        raise UserError(f"{data_dir}: features differ from those of {source}: {', '.join(differ)}")


SPLITS = ("valid", "all")


def held_out_clips(
    data_dir: Path,
    cfg: Config,
    stats: FeatureStats,
    limit: int | None = None,
    split: str = "valid",
    skipped: SkipLog | None = None,
) -> list[Clip]:
    """The utterances of ``split``, whole, in manifest order (the first ``limit``):
    ``valid`` is the validation split; ``all`` is every utterance of the folder (training
    split first), for a corpus the model never saw, such as another speaker's. Corrupted
    clips are left out and reported to ``skipped``."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    parts = ("valid",) if split == "valid" else ("train", "valid")
    datasets = [SegmentDataset(data_dir, p, cfg, stats, full_utterances=True) for p in parts]
    items = [d[i] for d in datasets for i in range(len(d))]
    for item in items:
        if "corrupt" in item and skipped is not None:
            skipped.record(*item["corrupt"])
    items = [item for item in items if "corrupt" not in item]
    if not items:
        raise UserError(
            f"{data_dir}: the {split} split has no utterances "
            f"({' + '.join(p + '.jsonl' for p in parts)} empty)"
        )
    items = items if limit is None else items[:limit]
    return [Clip(it["id"], it["audio"], it["mel"], it["speaker"]) for it in items]


def _speaker(model: LoadedModel, clip: Clip, device: torch.device) -> torch.Tensor | None:
    return torch.tensor([clip.speaker], device=device) if model.num_speakers > 0 else None


# -- teacher: likelihood and samples -----------------------------------------------------------


@torch.inference_mode()
def held_out_nll(teacher: LoadedModel, clips: list[Clip], device: torch.device) -> dict[str, Any]:
    """NLL in bits per sample over all ``clips``, and per clip."""
    total_nats, total_samples, per_clip = 0.0, 0, {}
    for clip in clips:
        audio = clip.audio[None].to(device)
        mel = clip.mel[None].to(device) if teacher.conditional else None
        logp = teacher.teacher.log_prob(audio, mel, _speaker(teacher, clip, device))
        nats = -float(logp.double().sum())
        per_clip[clip.id] = nats / audio.shape[-1] / math.log(2.0)
        total_nats += nats
        total_samples += audio.shape[-1]
    return {
        "bits_per_sample": total_nats / total_samples / math.log(2.0),
        "samples": total_samples,
        "clips": per_clip,
    }


@torch.inference_mode()
def teacher_samples(
    teacher: LoadedModel, clips: list[Clip], seconds: float, device: torch.device
) -> dict[str, np.ndarray]:
    """Teacher samples conditioned on the first ``seconds`` of every clip, generated as one
    batch (shorter clips are padded with mean features and their samples cut back)."""
    hop = teacher.cfg.audio.hop_length
    frames = frames_for(seconds, teacher.cfg.audio)
    items = [
        {
            "id": c.id,
            "audio": c.audio[: frames * hop],
            "mel": c.mel[:, :frames],
            "speaker": c.speaker,
        }
        for c in clips
    ]
    batch = collate(items)
    mel, speaker = (
        None if t is None else t.to(device)
        for t in (teacher.batch_mel(batch), teacher.batch_speaker(batch))
    )
    generator = torch.Generator(device=device).manual_seed(SEED)
    audio = generate(
        teacher.model,
        mel,
        speaker,
        num_samples=batch["mel"].shape[-1] * hop,
        generator=generator,
        method="cached",
    )
    return {
        c.id: audio[i, : int(batch["lengths"][i])].float().cpu().numpy()
        for i, c in enumerate(clips)
    }


# -- student: copy-synthesis and KL ------------------------------------------------------------


@torch.inference_mode()
def student_samples(
    student: LoadedModel, clips: list[Clip], device: torch.device, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """Copy-synthesis of every clip from its own mel, in one pass each, the noise scaled by
    ``temperature``."""
    out = {}
    for clip in clips:
        generator = torch.Generator(device=device).manual_seed(SEED)
        mel, speaker = clip.mel[None].to(device), _speaker(student, clip, device)
        audio = student.student.synthesize(mel, speaker, generator, temperature)
        out[clip.id] = audio[0].float().cpu().numpy()
    return out


@torch.no_grad()
def kl_estimate(
    student: LoadedModel, teacher: LoadedModel, clips: list[Clip], device: torch.device
) -> dict[str, Any]:
    """The distillation objective's KL(student || teacher) estimate (nats per sample) on the
    first ``data.segment_length`` samples of every clip, and its mean over clips. Segments
    bound the memory of the ``distill.num_draws`` draws per step, and the estimate is a
    per-sample average, so a training-length segment measures what training optimises."""
    objective = Distillation(teacher.model, student.cfg)
    length, hop = student.cfg.data.segment_length, student.cfg.audio.hop_length
    if length is None:
        raise UserError("the KL estimate runs on segments; data.segment_length is unset")
    torch.manual_seed(SEED)  # the objective draws its noise from the global generator
    per_clip = {}
    for clip in clips:
        frames = min(length // hop, clip.mel.shape[-1])
        batch = {
            "audio": clip.audio[None, : frames * hop].to(device),
            "mel": clip.mel[None, :, :frames].to(device),
            "speaker": torch.tensor([clip.speaker], device=device),
        }
        per_clip[clip.id] = float(objective.validate(student.model, batch)["kl"])
    return {
        "nats_per_sample": float(np.mean(list(per_clip.values()))),
        "segment_length": length,
        "clips": per_clip,
    }


# -- the baseline ----------------------------------------------------------------------------


def griffin_lim_samples(
    clips: list[Clip], cfg: Config, stats: FeatureStats, n_iter: int
) -> dict[str, np.ndarray]:
    """Griffin-Lim of every clip from the log-mel that conditions the models, un-normalised
    with the same ``stats`` that normalised it."""
    return {
        clip.id: griffin_lim(
            stats.denormalize(clip.mel).numpy(), cfg.audio, n_iter=n_iter, seed=SEED
        )
        for clip in clips
    }


# -- the command -----------------------------------------------------------------------------


def evaluate(
    checkpoint: str | Path,
    data_dir: Path,
    out_dir: Path,
    teacher: str | Path | None = None,
    max_clips: int = 8,
    teacher_seconds: float = 0.5,
    device: str = "cpu",
    griffin_lim_iters: int = 32,
    split: str = "valid",
    command: str | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the held-out split of ``data_dir`` and write the report
    folder ``out_dir`` (with the listening page, ``index.html``, which shows ``command``);
    a student synthesises at ``temperature``. Returns the contents of ``metrics.json``."""
    check_temperature(temperature)
    if max_clips < 1:
        raise UserError(f"--max-clips must be at least 1, got {max_clips}")
    if teacher_seconds <= 0:
        raise UserError(f"--teacher-seconds must be positive, got {teacher_seconds}")
    if griffin_lim_iters < 0:
        raise UserError(f"--griffin-lim-iters must be >= 0, got {griffin_lim_iters}")
    dev = torch.device(device)
    main = load_model(checkpoint, device=dev)
    if main.kind == "teacher" and teacher is not None:
        raise UserError(f"{checkpoint}: is a teacher checkpoint; --teacher is for students")
    ref = load_model(teacher, "teacher", dev) if teacher is not None else None
    if ref is not None:
        check_teacher_compatible(ref.cfg, main.cfg)
    check_dataset(data_dir, main.cfg, checkpoint)
    the_teacher = main if main.kind == "teacher" else ref

    skipped = SkipLog(out_dir / SKIPPED_NAME, data_dir, total=0)
    clips = held_out_clips(data_dir, main.cfg, main.feature_stats, max_clips, split, skipped)
    results = Results(
        {
            "checkpoint": str(checkpoint),
            "kind": main.kind,
            "data": str(data_dir),
            "teacher": str(teacher) if teacher else None,
            "clips": len(clips),
            "teacher_seconds": teacher_seconds,
            "griffin_lim_iters": griffin_lim_iters,
            "split": split,
            "temperature": temperature,
            "config": config_to_dict(main.cfg),
        }
    )
    synthesis: dict[str, dict[str, np.ndarray]] = {}
    if main.kind == "teacher":
        log.info("held-out NLL over the validation split")
        results.nll = held_out_nll(
            main,
            held_out_clips(data_dir, main.cfg, main.feature_stats, split=split, skipped=skipped),
            dev,
        )
    else:
        log.info("student copy-synthesis of %d clip(s)", len(clips))
        synthesis["student"] = student_samples(main, clips, dev, temperature)
        if ref is not None:
            log.info("KL(student || teacher) estimate")
            results.kl = kl_estimate(main, ref, clips, dev)
    if the_teacher is not None:
        log.info("teacher samples of %g s from %d clip(s)", teacher_seconds, len(clips))
        # The teacher's own statistics normalise its conditioning.
        t_clips = held_out_clips(
            data_dir, the_teacher.cfg, the_teacher.feature_stats, max_clips, split, skipped
        )
        synthesis["teacher"] = teacher_samples(the_teacher, t_clips, teacher_seconds, dev)
    if griffin_lim_iters > 0:
        log.info("Griffin-Lim (%d iterations) of %d clip(s)", griffin_lim_iters, len(clips))
        synthesis["griffin_lim"] = griffin_lim_samples(
            clips, main.cfg, main.feature_stats, griffin_lim_iters
        )
    for name, audio in synthesis.items():
        results.samples[name] = score(clips, audio, main.cfg)
    if "student" in synthesis and "teacher" in synthesis:
        span = {c: synthesis["student"][c][: len(a)] for c, a in synthesis["teacher"].items()}
        results.samples["student_span"] = score(clips, span, main.cfg)
    results.header["figures"] = draw_figures(out_dir, clips, synthesis, main.cfg)
    if the_teacher is not None:
        results.header["nll_curve"] = plot_nll_curve(out_dir, Path(the_teacher.source))
    results.header["skipped"] = skipped.summary()
    write_report(out_dir, results)
    write_listening_page(
        out_dir,
        results,
        clips,
        synthesis,
        main.cfg,
        [m for m in (main, ref) if m is not None],
        command,
    )
    return results.to_dict()
