"""Speed of the student and the teacher, side by side, in one run on one device.

:func:`benchmark` (``wavedistill benchmark``) measures three ways of making audio from the same
mel features:

- ``student``: the IAF student's one parallel pass (``IAFStudent.synthesize``);
- ``teacher_cached``: the teacher's incremental sampler with cached layer inputs;
- ``teacher_naive``: the teacher's naive sampler (recomputes the receptive field every step),
  for a few steps only (``naive_steps``), because it is slow by construction. The steps are
  taken in the steady state, after the receptive field has filled
  (:func:`wavedistill.models.sampling.steady_naive_steps`): earlier steps see a shorter past and
  would flatter it.

Models come from checkpoints or, with random weights, from config files alone, so paper-sized
models can be measured without training them (both as a
:class:`~wavedistill.store.loading.LoadedModel`).

Method. The input is real speech: the bundled clip's log-mel
(:func:`wavedistill.data.features.log_mel`), tiled or cropped to the requested length and
normalised (by the checkpoint's statistics, or by the clip's own when the model comes from a
config). Every measurement runs once untimed first
(warm-up: allocator, kernels, caches; the samplers warm up on one frame, which reaches every
code path), then ``repeats`` timed runs, each between two device synchronisations; the median
is reported with the spread (max - min) / median. ``threads`` sets torch's intra-op threads
for the run. On a machine shared with other jobs, more threads than idle cores makes OpenMP
wait at barriers and can slow small operations by orders of magnitude: measure on idle cores.
Timing, peak memory, the matmul peak and FLOP counting live in :mod:`wavedistill.bench.profiling`.

Reported per model:

- ``samples_per_s``: audio samples produced per second, summed over the batch;
- ``rtf``: real-time factor, seconds of compute per second of audio at that throughput
  (``sample_rate / samples_per_s``; below 1 is faster than real time);
- ``flops_per_sample``: counted from the architecture (:mod:`wavedistill.bench.profiling`),
  multiply-add = 2 FLOPs;
- ``achieved_gflops``: ``flops_per_sample * samples_per_s / 1e9``, beside ``peak_matmul_gflops``,
  the GFLOP/s of a large matrix product timed in the same run (fp32, or bf16 with
  ``dtype="bfloat16"``; its fastest repeat), and their ratio ``fraction_of_peak``;
- ``peak_rss_mb``: the process's peak resident memory while the model ran; on a GPU,
  ``peak_gpu_mb`` (:class:`wavedistill.bench.profiling.PeakMemory`).

With ``training``, also the samples/s of one optimiser step of the teacher's maximum-likelihood
objective and of the distillation objective. The report is a dict (the JSON document), shown
by :func:`format_table` and serialised by :func:`report_json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wavedistill.bench.profiling import (
    FlopCount,
    PeakMemory,
    cpu_model,
    matmul_peak_gflops,
    naive_teacher_flops,
    student_flops,
    teacher_flops,
    time_call,
)
from wavedistill.config import SAMPLER_DTYPE_NAMES, Config, load_config
from wavedistill.data.audio import load_audio
from wavedistill.data.features import (
    FeatureStats,
    frames_for,
    log_mel,
    shortest_clip,
    whole_frames,
)
from wavedistill.errors import UserError
from wavedistill.models.sampling import generate, sample_naive_steps, steady_naive_steps
from wavedistill.objectives.distillation import Distillation, check_teacher_compatible
from wavedistill.objectives.likelihood import MaximumLikelihood
from wavedistill.precision import resolve_dtype
from wavedistill.store.checkpoint import ModelKind
from wavedistill.store.loading import LoadedModel, load_model, random_model

log = logging.getLogger(__name__)

BUNDLED_CLIP = Path(__file__).resolve().parents[2] / "data" / "arctic" / "arctic_a0007.wav"
DTYPES = SAMPLER_DTYPE_NAMES  # the benchmark times the teacher's sampler in each


# -- settings --------------------------------------------------------------------------------


@dataclass
class Settings:
    """What the run measures and how. Build it with :meth:`checked` (validated); the
    command-line defaults live in the ``benchmark`` parser."""

    seconds: float  # audio per batch row for the student and the cached teacher
    naive_steps: int  # steps of the naive teacher sampler
    batch: int
    repeats: int  # timed runs per measurement
    device: torch.device
    dtype: torch.dtype  # float32, or bfloat16 (autocast / the cached sampler's bf16 path)
    clip: Path = BUNDLED_CLIP  # the speech whose log-mel conditions every model

    @classmethod
    def checked(
        cls,
        seconds: float,
        naive_steps: int,
        batch: int,
        repeats: int,
        device: str | torch.device,
        dtype: str,
        clip: Path | None = None,
    ) -> Settings:
        """Settings from plain values; a value out of range is a one-line UserError naming
        the command-line flag. ``dtype``: ``"float32"`` or ``"bfloat16"``; ``clip`` None: the
        bundled clip."""
        if not seconds > 0:
            raise UserError(f"--seconds must be positive, got {seconds}")
        if naive_steps < 1:
            raise UserError(f"--naive-steps must be at least 1, got {naive_steps}")
        if batch < 1 or repeats < 1:
            raise UserError(f"--batch and --repeats must be at least 1, got {batch} and {repeats}")
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        # bf16 where the device computes it natively; emulated, it would take minutes
        resolve_dtype(dtype, dev)
        return cls(
            seconds=seconds,
            naive_steps=naive_steps,
            batch=batch,
            repeats=repeats,
            device=dev,
            dtype=getattr(torch, dtype),
            clip=Path(clip) if clip is not None else BUNDLED_CLIP,
        )

    def precision(self):
        """bf16 autocast for ``bfloat16``; float32 runs as is."""
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


# -- inputs ----------------------------------------------------------------------------------


def clip_features(cfg: Config, clip: Path = BUNDLED_CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip's audio ``(T,)`` at ``audio.sample_rate``, cut to whole frames, and its
    un-normalised log-mel ``(n_mels, T / hop)``."""
    if not clip.is_file():
        raise UserError(
            f"{clip}: no such clip to condition the benchmark on; give --clip "
            "(any speech recording)"
        )
    audio = torch.from_numpy(load_audio(clip, cfg.audio.sample_rate))
    usable = whole_frames(len(audio), cfg.audio)
    if usable is None:
        raise UserError(
            f"{clip}: too short to condition the benchmark on ({len(audio)} "
            f"samples; needs at least {shortest_clip(cfg.audio)})"
        )
    return audio[:usable], log_mel(audio[:usable], cfg.audio)


def tile(x: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """``x[..., offset:]`` repeated along the last axis and cut to ``length``: ``(..., length)``."""
    reps = math.ceil((length + offset) / x.shape[-1])
    return torch.cat([x] * reps, dim=-1)[..., offset : offset + length]


def benchmark_batch(
    cfg: Config,
    stats: FeatureStats | None,
    frames: int,
    batch: int,
    device: torch.device,
    clip: Path = BUNDLED_CLIP,
) -> dict[str, torch.Tensor]:
    """Real speech for a benchmark: ``{"audio": (B, frames * hop), "mel": (B, n_mels, frames)
    normalised, "speaker": (B,) zeros}``. Rows start at different frames of the tiled clip so a
    batch holds different inputs. ``stats`` None normalises by the clip's own statistics."""

    audio, mel = clip_features(cfg, clip)
    if stats is None:
        stats = FeatureStats.compute([mel], std_floor=cfg.audio.stats_std_floor)
    hop, stride = cfg.audio.hop_length, max(1, mel.shape[-1] // max(batch, 1))
    mels = [tile(mel, frames, b * stride) for b in range(batch)]
    audios = [tile(audio, frames * hop, b * stride * hop) for b in range(batch)]
    return {
        "audio": torch.stack(audios).to(device),
        "mel": stats.normalize(torch.stack(mels)).to(device),
        "speaker": torch.zeros(batch, dtype=torch.long, device=device),
    }


def loaded_batch(loaded: LoadedModel, frames: int, settings: Settings) -> dict[str, torch.Tensor]:
    """:func:`benchmark_batch` of ``frames`` frames with the model's config and statistics."""
    return benchmark_batch(
        loaded.cfg, loaded.stats, frames, settings.batch, settings.device, settings.clip
    )


# -- models ----------------------------------------------------------------------------------


def load_kind(
    kind: ModelKind, checkpoint: str | Path | None, config: Path | None, device: torch.device
) -> LoadedModel | None:
    """The model of one kind from a checkpoint, or from a config with random weights (seeded,
    no statistics), or None when neither is given."""
    if checkpoint is not None and config is not None:
        raise UserError(f"give --{kind} or --{kind}-config, not both")
    if checkpoint is not None:
        return load_model(checkpoint, kind, device)
    if config is not None:
        return random_model(kind, load_config(config), f"{config} (random weights)", device)
    return None


# -- measuring -------------------------------------------------------------------------------


def measure(
    fn: Callable[[], Any],
    samples_per_call: int,
    flops: FlopCount,
    loaded: LoadedModel,
    settings: Settings,
    peak_gflops: float,
    warmup: Callable[[], Any] | None = None,
    autocast: bool = True,
) -> dict[str, Any]:
    """Time ``fn`` (after one untimed call of ``warmup``, by default ``fn`` itself) and report
    the per-model fields of the JSON. ``autocast``: run under the run's precision (False when
    ``fn`` sets its own)."""
    precision = settings.precision() if autocast else nullcontext()
    with precision, torch.inference_mode(), PeakMemory(settings.device) as memory:
        (warmup or fn)()
        timing = time_call(fn, settings.device, settings.repeats, warmup=0)
    rate = samples_per_call / timing.median
    flops_per_sample = flops.total
    achieved = flops_per_sample * rate / 1e9
    result = {
        "samples_per_s": rate,
        "rtf": loaded.cfg.audio.sample_rate / rate,
        "flops_per_sample": flops_per_sample,
        "flops_by_part": flops.parts,
        "achieved_gflops": achieved,
        "fraction_of_peak": achieved / peak_gflops,
        "peak_rss_mb": memory.rss_mb,
        "seconds_per_call": timing.median,
        "spread": timing.spread,
        "samples_per_call": samples_per_call,
        "source": loaded.source,
        "parameters": loaded.model.num_parameters,
        "receptive_field": loaded.model.receptive_field,
        "config": dataclasses.asdict(loaded.section),
    }
    if memory.gpu_mb is not None:
        result["peak_gpu_mb"] = memory.gpu_mb
    return result


def _generator(settings: Settings) -> torch.Generator:
    return torch.Generator(device=settings.device).manual_seed(0)


def measure_student(student: LoadedModel, settings: Settings, peak: float) -> dict[str, Any]:
    """One-pass synthesis of ``settings.seconds`` of audio per batch row."""
    frames = frames_for(settings.seconds, student.cfg.audio)
    batch = loaded_batch(student, frames, settings)
    model, mel, speaker = student.student, batch["mel"], student.batch_speaker(batch)

    def run():
        return model.synthesize(mel, speaker, generator=_generator(settings))

    samples = settings.batch * frames * student.cfg.audio.hop_length
    return measure(run, samples, student_flops(model), student, settings, peak)


def measure_teacher(teacher: LoadedModel, settings: Settings, peak: float) -> dict[str, Any]:
    """Cached sequential sampling of ``settings.seconds`` of audio per batch row."""
    frames = frames_for(settings.seconds, teacher.cfg.audio)
    batch = loaded_batch(teacher, frames, settings)
    mel, speaker = teacher.batch_mel(batch), teacher.batch_speaker(batch)
    num_samples = frames * teacher.cfg.audio.hop_length
    # The cached sampler has its own bf16 path (bf16 weights, float32 residual stream and
    # distribution) rather than autocast.
    precision = "bfloat16" if settings.dtype == torch.bfloat16 else None

    def run(frames_used: int = frames):
        m = mel[..., :frames_used] if mel is not None else None
        return generate(
            teacher.model,
            m,
            speaker,
            num_samples=frames_used * teacher.cfg.audio.hop_length,
            generator=_generator(settings),
            precision=precision,
        )

    # The warm-up only needs every code path once: one frame is enough.
    return measure(
        run,
        settings.batch * num_samples,
        teacher_flops(teacher.cfg),
        teacher,
        settings,
        peak,
        warmup=lambda: run(1),
        autocast=False,
    )


def measure_teacher_naive(teacher: LoadedModel, settings: Settings, peak: float) -> dict[str, Any]:
    """``settings.naive_steps`` steps of the naive sampler in the steady state, the past being
    the bundled clip's audio; under autocast for bfloat16."""
    steps, frames = steady_naive_steps(teacher.model, settings.naive_steps)
    batch = loaded_batch(teacher, frames, settings)
    mel, speaker, audio = teacher.batch_mel(batch), teacher.batch_speaker(batch), batch["audio"]
    if mel is None:
        audio = audio[:, :frames]  # unconditional: the clip is ``frames`` samples long

    def run(count: int = len(steps)):
        sample_naive_steps(teacher.model, mel, speaker, audio, steps[:count], _generator(settings))

    flops = naive_teacher_flops(teacher.cfg, teacher.model, steps, frames)
    return measure(
        run, settings.batch * len(steps), flops, teacher, settings, peak, warmup=lambda: run(1)
    )


# -- training throughput ---------------------------------------------------------------------


@contextmanager
def trainable(model: torch.nn.Module):
    """The model in training mode with gradients for the ``with`` block, frozen again after."""
    model.train().requires_grad_(True)
    try:
        yield model
    finally:
        model.eval().requires_grad_(False)


def measure_step(
    model: torch.nn.Module, objective, batch: dict[str, torch.Tensor], settings: Settings
) -> dict[str, Any]:
    """Samples/s of one optimiser step (forward, backward, Adam) of ``objective`` on ``batch``."""
    with trainable(model):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with settings.precision():
                loss, _ = objective.loss(model, batch)
            loss.backward()
            optimizer.step()

        with PeakMemory(settings.device) as memory:
            timing = time_call(step, settings.device, settings.repeats)
    samples = batch["audio"].numel()
    return {
        "samples_per_s": samples / timing.median,
        "seconds_per_step": timing.median,
        "spread": timing.spread,
        "batch": batch["audio"].shape[0],
        "segment_length": batch["audio"].shape[1],
        "peak_rss_mb": memory.rss_mb,
    }


def training_batch(loaded: LoadedModel, settings: Settings) -> dict[str, torch.Tensor]:
    """``settings.batch`` segments of ``data.segment_length`` samples of real speech."""
    cfg = loaded.cfg
    if cfg.data.segment_length is None:
        raise UserError("training speed is measured on segments; data.segment_length is unset")
    return loaded_batch(loaded, cfg.data.segment_length // cfg.audio.hop_length, settings)


def measure_training(
    teacher: LoadedModel | None, student: LoadedModel | None, settings: Settings
) -> dict[str, Any]:
    """Training throughput: the teacher's maximum-likelihood step and the distillation step
    (the student's KL + power loss against the frozen teacher)."""
    out: dict[str, Any] = {}
    if teacher is not None:
        out["teacher_step"] = measure_step(
            teacher.model, MaximumLikelihood(), training_batch(teacher, settings), settings
        )
    if teacher is not None and student is not None:
        check_teacher_compatible(teacher.cfg, student.cfg)
        objective = Distillation(teacher.model, student.cfg)
        batch = training_batch(student, settings)
        out["distillation_step"] = measure_step(student.model, objective, batch, settings)
    return out


# -- the run ---------------------------------------------------------------------------------


def benchmark(
    settings: Settings,
    *,
    teacher: str | Path | None = None,
    student: str | Path | None = None,
    teacher_config: Path | None = None,
    student_config: Path | None = None,
    threads: int | None = None,
    training: bool = False,
) -> dict[str, Any]:
    """Measure the models given as checkpoints (``teacher``, ``student``) or as configs with
    random weights (``*_config``); the JSON document as a dict. ``threads`` holds for the run
    only (a notebook calling this keeps its own setting)."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if teacher is None and teacher_config is None and student is None and student_config is None:
        raise UserError(
            "nothing to measure: give --teacher/--teacher-config and/or --student/--student-config"
        )
    teacher_model = load_kind("teacher", teacher, teacher_config, settings.device)
    student_model = load_kind("student", student, student_config, settings.device)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads or previous)
        return run_benchmark(teacher_model, student_model, settings, training)
    finally:
        torch.set_num_threads(previous)


def run_benchmark(
    teacher: LoadedModel | None,
    student: LoadedModel | None,
    settings: Settings,
    training: bool = False,
) -> dict[str, Any]:
    """Measure every given model on the same device; the JSON document as a dict."""
    peak = matmul_peak_gflops(settings.device, settings.dtype)
    models: dict[str, Any] = {}
    if student is not None:
        log.info("measuring the student's one-pass synthesis")
        models["student"] = measure_student(student, settings, peak)
    if teacher is not None:
        log.info("measuring the teacher's cached sampling")
        models["teacher_cached"] = measure_teacher(teacher, settings, peak)
        log.info("measuring the teacher's naive sampling")
        models["teacher_naive"] = measure_teacher_naive(teacher, settings, peak)
    speedup = None
    if "student" in models and "teacher_cached" in models:
        speedup = models["student"]["samples_per_s"] / models["teacher_cached"]["samples_per_s"]
    report = {
        "device": device_name(settings.device),
        "threads": torch.get_num_threads(),
        "dtype": str(settings.dtype).removeprefix("torch."),
        "batch": settings.batch,
        "seconds": settings.seconds,
        "naive_steps": settings.naive_steps,
        "clip": settings.clip.name,
        "repeats": settings.repeats,
        "torch": torch.__version__,
        "peak_matmul_gflops": peak,
        "models": models,
        "speedup_student_over_teacher": speedup,
    }
    if training:
        report["training"] = measure_training(teacher, student, settings)
    return report


def device_name(device: torch.device) -> str:
    """``"cuda:0 (NVIDIA ...)"`` or ``"cpu (<processor>)"``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model() or platform.machine()})"


# -- the report ------------------------------------------------------------------------------


TABLE_HEADER = (
    "model",
    "samples/s",
    "RTF",
    "MFLOP/sample",
    "GFLOP/s",
    "% peak",
    "spread",
    "peak RSS MB",
)


def format_table(report: dict[str, Any]) -> str:
    """The report as a terminal table; every column as wide as its widest cell, so the
    columns stay apart whatever the values."""
    peak = report["peak_matmul_gflops"]
    rows = [TABLE_HEADER]
    for name, m in report["models"].items():
        rate = m["samples_per_s"]
        rows.append(
            (
                name,
                f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}",
                f"{m['rtf']:.3g}",
                f"{m['flops_per_sample'] / 1e6:.3f}",
                f"{m['achieved_gflops']:.2f}",
                f"{100 * m['fraction_of_peak']:.1f}%",
                f"{100 * m['spread']:.1f}%",
                f"{m['peak_rss_mb']:,.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    lines = [
        f"device {report['device']}, {report['threads']} thread(s), {report['dtype']}, "
        f"batch {report['batch']}; matmul peak {peak:.1f} GFLOP/s"
    ]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    if report["speedup_student_over_teacher"] is not None:
        lines.append(
            f"student / teacher (cached) speed-up: {report['speedup_student_over_teacher']:,.1f}x"
        )
    for name, m in report.get("training", {}).items():
        lines.append(
            f"training {name}: {m['samples_per_s']:,.0f} samples/s "
            f"(batch {m['batch']} x {m['segment_length']} samples, "
            f"spread {100 * m['spread']:.1f}%)"
        )
    return "\n".join(lines)


def report_json(report: dict[str, Any]) -> str:
    """The report as the JSON document (indented, newline-terminated)."""
    return json.dumps(report, indent=2) + "\n"
