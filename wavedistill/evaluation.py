"""Held-out evaluation of a teacher or a student checkpoint, written as a report folder.

``wavedistill evaluate --checkpoint CKPT --data DIR [--teacher CKPT] --out REPORT_DIR``:

- a **teacher** checkpoint: the negative log-likelihood of the validation split in bits per
  sample (every held-out utterance, whole; the total over all samples divided by their number),
  and teacher samples conditioned on the first ``--max-clips`` clips, cut to
  ``--teacher-seconds`` because sequential sampling is slow;
- a **student** checkpoint: copy-synthesis of each of the first ``--max-clips`` held-out clips
  from its own mel, compared with the original by every metric of :mod:`wavedistill.metrics`;
  with ``--teacher``, also the KL(student || teacher) estimate of the distillation objective on
  the first ``data.segment_length`` samples of those clips, and teacher samples of the same
  clips as above, scored alike.

Every evaluation also scores **Griffin-Lim** (:mod:`wavedistill.griffin_lim`,
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
(a summary table) and ``figures/<clip>.png`` (log-mel of the original, the teacher sample and the
student's synthesis, one above the other, for the first few clips). A metric without a value
(a silent clip for PESQ, the ``metrics`` extra not installed) is reported with the reason.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wavedistill import metrics
from wavedistill.config import Config, audio_differences, config_to_dict, load_config
from wavedistill.datacheck import SKIPPED_NAME, SkipLog
from wavedistill.errors import UserError
from wavedistill.features import FeatureStats, frames_for, lowest_log_mel
from wavedistill.fileio import atomic_path, atomic_write_text
from wavedistill.loading import LoadedModel, load_model

log = logging.getLogger(__name__)

FIGURE_CLIPS = 3  # clips drawn in figures: enough to judge by eye, few enough to look at
SEED = 0  # noise of every synthesis, so that two evaluations of a checkpoint agree


@dataclass
class Clip:
    """A held-out utterance: ``audio (T,)`` in [-1, 1] and normalised ``mel (n_mels, T / hop)``."""

    id: str
    audio: torch.Tensor
    mel: torch.Tensor
    speaker: int


@dataclass
class Results:
    """Everything measured, in the shape of ``metrics.json``."""

    header: dict[str, Any]
    nll: dict[str, Any] | None = None
    kl: dict[str, Any] | None = None
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # "student"/"teacher"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.header)
        if self.nll is not None:
            out["nll"] = self.nll
        if self.kl is not None:
            out["kl"] = self.kl
        out["copy_synthesis"] = self.samples
        return out


# -- loading ---------------------------------------------------------------------------------


def check_dataset(data_dir: Path, cfg: Config, source: Path) -> None:
    """The dataset's features must be the ones the model was trained on."""
    config = data_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"{data_dir}: not a dataset folder (no config.yaml); run "
                        "`wavedistill preprocess`")
    differ = audio_differences(load_config(config).audio, cfg.audio)
    if differ:
        raise UserError(f"{data_dir}: features differ from those of {source}: {', '.join(differ)}")


SPLITS = ("valid", "all")


def held_out_clips(data_dir: Path, cfg: Config, stats: FeatureStats, limit: int | None = None,
                   split: str = "valid", skipped: SkipLog | None = None) -> list[Clip]:
    """The utterances of ``split``, whole, in manifest order (the first ``limit``):
    ``valid`` is the validation split; ``all`` is every utterance of the folder (training
    split first), for a corpus the model never saw, such as another speaker's. Corrupted
    clips are left out and reported to ``skipped``."""
    from wavedistill.datasets import SegmentDataset

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
        raise UserError(f"{data_dir}: the {split} split has no utterances "
                        f"({' + '.join(p + '.jsonl' for p in parts)} empty)")
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
        logp = teacher.model.log_prob(audio, mel, _speaker(teacher, clip, device))
        nats = -float(logp.double().sum())
        per_clip[clip.id] = nats / audio.shape[-1] / math.log(2.0)
        total_nats += nats
        total_samples += audio.shape[-1]
    return {"bits_per_sample": total_nats / total_samples / math.log(2.0),
            "samples": total_samples, "clips": per_clip}


@torch.inference_mode()
def teacher_samples(teacher: LoadedModel, clips: list[Clip], seconds: float,
                    device: torch.device) -> dict[str, np.ndarray]:
    """Teacher samples conditioned on the first ``seconds`` of every clip, generated as one
    batch (shorter clips are padded with mean features and their samples cut back)."""
    from wavedistill.datasets import collate
    from wavedistill.generation import generate

    hop = teacher.cfg.audio.hop_length
    frames = frames_for(seconds, teacher.cfg.audio)
    items = [{"id": c.id, "audio": c.audio[: frames * hop], "mel": c.mel[:, :frames],
              "speaker": c.speaker} for c in clips]
    batch = collate(items)
    mel, speaker = (None if t is None else t.to(device)
                    for t in (teacher.batch_mel(batch), teacher.batch_speaker(batch)))
    generator = torch.Generator(device=device).manual_seed(SEED)
    audio = generate(teacher.model, mel, speaker, num_samples=batch["mel"].shape[-1] * hop,
                     generator=generator, method="cached")
    return {c.id: audio[i, : int(batch["lengths"][i])].float().cpu().numpy()
            for i, c in enumerate(clips)}


# -- student: copy-synthesis and KL ------------------------------------------------------------


@torch.inference_mode()
def student_samples(student: LoadedModel, clips: list[Clip], device: torch.device
                    ) -> dict[str, np.ndarray]:
    """Copy-synthesis of every clip from its own mel, in one pass each."""
    out = {}
    for clip in clips:
        generator = torch.Generator(device=device).manual_seed(SEED)
        audio = student.model.synthesize(clip.mel[None].to(device),
                                         _speaker(student, clip, device),
                                         generator=generator)
        out[clip.id] = audio[0].float().cpu().numpy()
    return out


@torch.no_grad()
def kl_estimate(student: LoadedModel, teacher: LoadedModel, clips: list[Clip], device: torch.device
                ) -> dict[str, Any]:
    """The distillation objective's KL(student || teacher) estimate (nats per sample) on the
    first ``data.segment_length`` samples of every clip, and its mean over clips. Segments
    bound the memory of the ``distill.num_draws`` draws per step, and the estimate is a
    per-sample average, so a training-length segment measures what training optimises."""
    from wavedistill.distillation import Distillation

    objective = Distillation(teacher.model, student.cfg)
    length, hop = student.cfg.data.segment_length, student.cfg.audio.hop_length
    torch.manual_seed(SEED)  # the objective draws its noise from the global generator
    per_clip = {}
    for clip in clips:
        frames = min(length // hop, clip.mel.shape[-1])
        batch = {"audio": clip.audio[None, : frames * hop].to(device),
                 "mel": clip.mel[None, :, :frames].to(device),
                 "speaker": torch.tensor([clip.speaker], device=device)}
        per_clip[clip.id] = float(objective.validate(student.model, batch)["kl"])
    return {"nats_per_sample": float(np.mean(list(per_clip.values()))),
            "segment_length": length, "clips": per_clip}


# -- the baseline ----------------------------------------------------------------------------


def griffin_lim_samples(clips: list[Clip], cfg: Config, stats: FeatureStats, n_iter: int
                        ) -> dict[str, np.ndarray]:
    """Griffin-Lim of every clip from the log-mel that conditions the models, un-normalised
    with the same ``stats`` that normalised it."""
    from wavedistill.griffin_lim import griffin_lim

    return {clip.id: griffin_lim(stats.denormalize(clip.mel).numpy(), cfg.audio, n_iter=n_iter,
                                 seed=SEED)
            for clip in clips}


# -- scoring ---------------------------------------------------------------------------------


def score(clips: list[Clip], synthesis: dict[str, np.ndarray], cfg: Config) -> dict[str, Any]:
    """Metrics of each synthesis against its original (cut to the synthesis's length), per clip
    and averaged over the clips where the metric has a value."""
    per_clip = {}
    for clip in clips:
        est = synthesis[clip.id]
        ref = clip.audio.numpy()[: len(est)]
        per_clip[clip.id] = metrics.compare(ref, est[: len(ref)], cfg)
    return {"mean": average(per_clip), "clips": per_clip}


def average(per_clip: dict[str, dict[str, float | str]]) -> dict[str, float | str]:
    """Mean of each metric over the clips that have a number; the first reason otherwise."""
    out: dict[str, float | str] = {}
    for metric in metrics.METRICS:
        values = [c[metric.name] for c in per_clip.values()]
        numbers = [v for v in values if isinstance(v, float)]
        out[metric.name] = float(np.mean(numbers)) if numbers else str(values[0])
    return out


# -- report ----------------------------------------------------------------------------------


def _cell(value: float | str) -> str:
    return f"{value:.3f}" if isinstance(value, float) else value


def _wins(ours: float, theirs: float, better: str) -> bool:
    if better == "lower":
        return ours < theirs
    if better == "higher":
        return ours > theirs
    return abs(ours) < abs(theirs)  # "closer to 0"


def against_baseline(samples: dict[str, dict[str, Any]], name: str,
                     baseline: str = "griffin_lim") -> dict[str, list[str]]:
    """``{"beats": [...], "loses": [...]}``: the metrics on which ``name``'s mean is better
    than / not better than ``baseline``'s (metrics without a value on either side are left
    out)."""
    out: dict[str, list[str]] = {"beats": [], "loses": []}
    for metric in metrics.METRICS:
        ours = samples[name]["mean"][metric.name]
        theirs = samples[baseline]["mean"][metric.name]
        if isinstance(ours, float) and isinstance(theirs, float):
            out["beats" if _wins(ours, theirs, metric.better) else "loses"].append(metric.name)
    return out


def verdict(samples: dict[str, dict[str, Any]]) -> str | None:
    """One sentence: on which metrics the model beats Griffin-Lim (None without both rows)."""
    name = next((n for n in ("student", "teacher") if n in samples), None)
    if name is None or "griffin_lim" not in samples:
        return None
    result = against_baseline(samples, name)
    beats = ", ".join(result["beats"]) or "no metric"
    loses = ", ".join(result["loses"]) or "no metric"
    return (f"The {name} beats Griffin-Lim on {beats}; Griffin-Lim is as good or better on "
            f"{loses}.")


def markdown(results: Results) -> str:
    """``report.md``: the averages as tables, the reason where a metric has no value."""
    h = results.header
    lines = [f"# Evaluation of `{h['checkpoint']}`", "",
             f"{h['kind']} checkpoint, dataset `{h['data']}`, {h['clips']} clip(s) of the "
             + ("validation split." if h["split"] == "valid"
                else "whole folder (never trained on)."), ""]
    if results.nll is not None:
        lines += [f"Held-out NLL: **{results.nll['bits_per_sample']:.4f} bits/sample** over "
                  f"{results.nll['samples']} samples.", ""]
    if results.kl is not None:
        lines += [f"KL(student ‖ teacher) estimate: **{results.kl['nats_per_sample']:.4f} "
                  "nats/sample**.", ""]
    if results.samples:
        names = list(results.samples)
        lines += ["| metric | better | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        missing: list[str] = []  # reasons of metrics without a value, each said once
        for metric in metrics.METRICS:
            label = f"{metric.name} ({metric.unit})" if metric.unit else metric.name
            values = [results.samples[n]["mean"][metric.name] for n in names]
            if all(isinstance(v, str) for v in values) and len(set(values)) == 1:
                missing.append(f"{metric.name}: {values[0]}")
                values = ["—"] * len(names)
            cells = [_cell(v) for v in values]
            lines.append(f"| {label} | {metric.better} | " + " | ".join(cells) + " |")
        lines.append("")
        if missing:
            lines += ["No value (—): " + "; ".join(missing) + ".", ""]
        sentence = verdict(results.samples)
        if sentence:
            lines += [sentence, ""]
        if "griffin_lim" in results.samples:
            lines += [f"Griffin-Lim: {h['griffin_lim_iters']} iterations from the same log-mel "
                      "(librosa), whole clips.", ""]
        if "teacher" in results.samples:
            lines += [f"Teacher samples cover the first {h['teacher_seconds']:g} s of each clip"
                      + ("; the student's cover the whole clip, and `student_span` scores them "
                         "on the teacher's span." if "student" in names else ".")
                      + " Metrics compare them with the same span of the original.", ""]
    if h.get("nll_curve"):
        lines += ["## Teacher: held-out bits/sample against steps", "",
                  f"![teacher NLL]({h['nll_curve']})", ""]
    if h.get("figures"):
        lines += ["## Log-mel spectrograms", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in h["figures"]]
        lines.append("")
    return "\n".join(lines)


def _log_mel(audio: np.ndarray, cfg: Config) -> np.ndarray | None:
    """(n_mels, F) log-mel of whole frames of ``audio``, or None when too short to analyse."""
    from wavedistill.features import log_mel

    usable = len(audio) - len(audio) % cfg.audio.hop_length
    if usable <= cfg.audio.n_fft // 2:
        return None
    return log_mel(torch.from_numpy(np.asarray(audio[:usable], np.float32)), cfg.audio).numpy()


def plot_clip(path: Path, clip: Clip, synthesis: dict[str, np.ndarray], cfg: Config) -> None:
    """One figure per clip: log-mel of the original and of each synthesis, one above the other
    on one time axis and one colour scale (so a quiet synthesis looks quiet)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [("original", clip.audio.numpy())] + list(synthesis.items())
    mels = [_log_mel(audio, cfg) for _, audio in rows]
    sr, hop = cfg.audio.sample_rate, cfg.audio.hop_length
    vmin = lowest_log_mel(cfg.audio)
    vmax = max((float(m.max()) for m in mels if m is not None), default=vmin + 1.0)
    fig = Figure(figsize=(8, 2.2 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas: no display and no global pyplot state
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    image = None
    for ax, (name, _), mel in zip(axes, rows, mels, strict=True):
        ax.set_title(f"{clip.id}: {name}" + (" (too short to draw)" if mel is None else ""))
        ax.set_ylabel("mel bin")
        ax.set_xlim(0, len(clip.audio) / sr)
        if mel is not None:
            image = ax.imshow(mel, origin="lower", aspect="auto", interpolation="none",
                              extent=(0, mel.shape[1] * hop / sr, 0, mel.shape[0]),
                              vmin=vmin, vmax=vmax)
            ax.set_xlim(0, len(clip.audio) / sr)  # imshow narrows the axis to its image
    axes[-1].set_xlabel("seconds")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="log-mel (natural log)")
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    """A figure as a PNG file, atomically (a full disk is one line, like every write)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def write_report(out_dir: Path, results: Results) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(results.to_dict(), indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", markdown(results))


# -- the command -----------------------------------------------------------------------------


def evaluate(checkpoint: Path, data_dir: Path, out_dir: Path, teacher: Path | None = None,
             max_clips: int = 8, teacher_seconds: float = 0.5, device: str = "cpu",
             griffin_lim_iters: int = 32, split: str = "valid") -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the held-out split of ``data_dir`` and write the report
    folder ``out_dir``; returns the contents of ``metrics.json``."""
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
    check_dataset(data_dir, main.cfg, checkpoint)
    ref = load_model(teacher, "teacher", dev) if teacher is not None else None
    if ref is not None:
        from wavedistill.distillation import check_teacher_compatible

        check_teacher_compatible(ref.cfg, main.cfg)
    the_teacher = main if main.kind == "teacher" else ref

    skipped = SkipLog(out_dir / SKIPPED_NAME, data_dir, total=0)
    clips = held_out_clips(data_dir, main.cfg, main.stats, max_clips, split, skipped)
    results = Results({"checkpoint": str(checkpoint), "kind": main.kind, "data": str(data_dir),
                       "teacher": str(teacher) if teacher else None, "clips": len(clips),
                       "teacher_seconds": teacher_seconds,
                       "griffin_lim_iters": griffin_lim_iters, "split": split,
                       "config": config_to_dict(main.cfg)})
    synthesis: dict[str, dict[str, np.ndarray]] = {}
    if main.kind == "teacher":
        log.info("held-out NLL over the validation split")
        results.nll = held_out_nll(main, held_out_clips(data_dir, main.cfg, main.stats,
                                                        split=split, skipped=skipped), dev)
    else:
        log.info("student copy-synthesis of %d clip(s)", len(clips))
        synthesis["student"] = student_samples(main, clips, dev)
        if ref is not None:
            log.info("KL(student || teacher) estimate")
            results.kl = kl_estimate(main, ref, clips, dev)
    if the_teacher is not None:
        log.info("teacher samples of %g s from %d clip(s)", teacher_seconds, len(clips))
        # The teacher's own statistics normalise its conditioning.
        t_clips = held_out_clips(data_dir, the_teacher.cfg, the_teacher.stats, max_clips, split,
                                 skipped)
        synthesis["teacher"] = teacher_samples(the_teacher, t_clips, teacher_seconds, dev)
    if griffin_lim_iters > 0:
        log.info("Griffin-Lim (%d iterations) of %d clip(s)", griffin_lim_iters, len(clips))
        synthesis["griffin_lim"] = griffin_lim_samples(clips, main.cfg, main.stats,
                                                       griffin_lim_iters)
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
    return results.to_dict()


def plot_nll_curve(out_dir: Path, teacher_ckpt: Path) -> str | None:
    """``figures/teacher_nll.png``: held-out bits/sample against steps, from the
    ``validation.jsonl`` of the teacher's run folder (``<run>/checkpoints/<ckpt>``); its path
    relative to ``out_dir``, or None when the run folder has no history."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from wavedistill.trainer import VALIDATION_HISTORY

    history = Path(teacher_ckpt).resolve().parent.parent / VALIDATION_HISTORY
    if not history.is_file():
        return None
    points: dict[int, float] = {}  # by step: a resumed run's repeated steps keep the last value
    for line in history.read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        if "nll_bits" in entry:
            points[int(entry["step"])] = float(entry["nll_bits"])
    if not points:
        return None
    steps = sorted(points)
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(steps, [points[s] for s in steps], marker="o")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out NLL (bits/sample)")
    ax.set_title("teacher: held-out negative log-likelihood")
    ax.grid(alpha=0.3)
    name = "figures/teacher_nll.png"
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    _save_figure(fig, out_dir / name)
    return name


def draw_figures(out_dir: Path, clips: list[Clip], synthesis: dict[str, dict[str, np.ndarray]],
                 cfg: Config) -> list[str]:
    """Figures of the first ``FIGURE_CLIPS`` clips; their paths relative to ``out_dir``."""
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    order = [n for n in ("teacher", "student", "griffin_lim") if n in synthesis]
    for clip in clips[:FIGURE_CLIPS]:
        name = f"figures/{clip.id.replace('/', '_')}.png"
        plot_clip(out_dir / name, clip, {n: synthesis[n][clip.id] for n in order}, cfg)
        names.append(name)
    return names
