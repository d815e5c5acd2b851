"""Speed of the student and the teacher, side by side, in one run on one device.

``wavedistill benchmark`` measures three ways of making audio from the same mel features:

- ``student``: the IAF student's one parallel pass (``IAFStudent.synthesize``);
- ``teacher_cached``: the teacher's incremental sampler with cached layer inputs;
- ``teacher_naive``: the teacher's naive sampler (recomputes the receptive field every step),
  for a few steps only (``--naive-steps``), because it is slow by construction. The steps are
  taken in the steady state, after the receptive field has filled: earlier steps see a
  shorter past and would flatter it.

Models come from checkpoints or, with random weights, from config files alone, so paper-sized
models can be measured without training them.

Method. The input is real speech: the bundled clip's log-mel (:func:`wavedistill.features.log_mel`),
tiled or cropped to the requested length and normalised (by the checkpoint's statistics, or by
the clip's own when the model comes from a config). Every measurement runs once untimed first
(warm-up: allocator, kernels, caches; the samplers warm up on one frame, which reaches every
code path), then ``--repeats`` timed runs, each between two device synchronisations; the median
is reported with the spread (max - min) / median. ``--threads`` sets torch's intra-op threads
for the run. On a machine shared with other jobs, more threads than idle cores makes OpenMP
wait at barriers and can slow small operations by orders of magnitude: measure on idle cores.

Reported per model:

- ``samples_per_s``: audio samples produced per second, summed over the batch;
- ``rtf``: real-time factor, seconds of compute per second of audio at that throughput
  (``sample_rate / samples_per_s``; below 1 is faster than real time);
- ``flops_per_sample``: counted from the architecture (below), multiply-add = 2 FLOPs;
- ``achieved_gflops``: ``flops_per_sample * samples_per_s / 1e9``, beside ``peak_matmul_gflops``,
  the GFLOP/s of a large matrix product timed in the same run (fp32, or bf16 with
  ``--dtype bfloat16``; its fastest repeat), and their ratio ``fraction_of_peak``;
- ``peak_rss_mb``: the process's peak resident memory while the model ran (Linux: the high-water
  mark is reset before each model through ``/proc/self/clear_refs``; elsewhere it is the peak of
  the process so far); on a GPU, ``peak_gpu_mb`` from ``torch.cuda.max_memory_allocated``.

FLOP counting (teacher, :func:`teacher_flops`). Per audio sample, for ``L`` layers of kernel
``k``, residual ``R``, gate ``G`` and skip ``S`` channels: the dilated convolutions
``2 k R G`` per layer; the conditioning added before the gate (one multiply-add per gate channel:
the channel-shared upsampling filter times the frame-rate projection) ``2 G`` per layer; the
folded residual+skip 1x1 ``2 (G/2)(R + S)`` per layer (``2 (G/2) S`` for the last, which has no
residual output); the input 1x1 ``2 R``; and the output head. Work on mel frames (context
convolution and the projection to all layers' gates) happens once per frame and is divided by
``hop_length``. Element-wise work (gates, additions, the output distribution) is not counted.
The naive sampler reruns the parallel pass over the whole frames one step depends on (receptive
field plus mel context), so its count is that window length times the per-sample count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wavedistill.config import Config, load_config
from wavedistill.errors import UserError

log = logging.getLogger(__name__)

BUNDLED_CLIP = Path(__file__).resolve().parents[1] / "data" / "arctic" / "arctic_a0007.wav"
# Square matrix size for the peak measurement: large enough to saturate the device's matrix
# units (a CPU reaches its plateau well before 2048; a data-centre GPU needs about 8192).
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}
MODEL_NAMES = ("student", "teacher_cached", "teacher_naive")


# -- timing ----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait until every queued kernel of ``device`` has finished (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock seconds of the timed repeats of one call."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: how much the repeats disagree."""
        return (max(self.times) - min(self.times)) / self.median


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1
              ) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed between two
    synchronisations of ``device``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(times)


# -- memory ----------------------------------------------------------------------------------


def _read_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux), or its peak so far elsewhere, in MB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return _peak_rusage_mb()


def _peak_rusage_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB on Linux
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@dataclass
class PeakMemory:
    """Peak memory while the ``with`` block runs: ``rss_mb`` (process) and ``gpu_mb``."""

    device: torch.device
    rss_mb: float = 0.0
    gpu_mb: float | None = None

    def __enter__(self) -> PeakMemory:
        try:  # writing 5 resets the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        hwm = _read_hwm_kb()
        self.rss_mb = hwm / 2**10 if hwm is not None else _peak_rusage_mb()
        if self.device.type == "cuda":
            self.gpu_mb = torch.cuda.max_memory_allocated(self.device) / 2**20


# -- the device's peak -----------------------------------------------------------------------


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 5,
                       size: int | None = None) -> float:
    """GFLOP/s of a square ``size x size`` matrix product (2 size^3 FLOPs) in its fastest
    repeat: a peak is what the device reaches, and a busy machine only ever slows it down."""
    n = size or PEAK_SIZE.get(device.type, 4096)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timing = time_call(lambda: torch.mm(a, b, out=out), device, repeats, warmup=2)
    return 2 * n**3 / timing.best / 1e9


# -- FLOPs -----------------------------------------------------------------------------------


@dataclass
class FlopCount:
    """FLOPs per audio sample, by part (multiply-add = 2)."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def teacher_flops(cfg: Config) -> FlopCount:
    """FLOPs per sample of one parallel pass of the teacher described by ``cfg`` (what is
    counted: see the module docstring)."""
    from wavedistill.distributions import build_distribution

    t, a = cfg.teacher, cfg.audio
    L, k, R, G, S = t.layers, t.kernel_size, t.residual_channels, t.gate_channels, t.skip_channels
    P = build_distribution(t).num_params
    parts = {
        "input_1x1": 2.0 * R,
        "dilated_convs": 2.0 * k * R * G * L,
        "conditioning_add": 2.0 * G * L if t.use_mel else 0.0,
        "residual_skip_1x1": 2.0 * (G // 2) * ((R + S) * (L - 1) + S),
        "output_head": 2.0 * S * S + 2.0 * S * P,  # ReLU, 1x1 S -> S, ReLU, 1x1 S -> P
        "conditioning_frames": 0.0,
    }
    if t.use_mel:
        n, c = a.n_mels, t.conditioning_context
        context = 2.0 * n * n * (2 * c + 1) if c > 0 else 0.0
        parts["conditioning_frames"] = (context + 2.0 * n * L * G) / a.hop_length
    return FlopCount(parts)


def naive_teacher_flops(cfg: Config, receptive_field: int, steps: range, frames: int
                        ) -> FlopCount:
    """FLOPs per sample of the naive sampler drawing ``steps`` of a clip of ``frames`` frames:
    every step reruns the parallel pass, frame-rate conditioning included, over the window of
    whole frames it depends on (receptive field plus mel context frames,
    :func:`wavedistill.generation.naive_window`); the mean window length times one sample of
    the parallel pass."""
    from wavedistill.generation import naive_window

    hop, context = _naive_hop_and_context(cfg)
    windows = [naive_window(step, receptive_field, hop, context, frames) for step in steps]
    mean_window = sum((f1 - f0) * hop for f0, f1 in windows) / len(steps)
    return FlopCount({name: value * mean_window
                      for name, value in teacher_flops(cfg).parts.items()})


def _naive_hop_and_context(cfg: Config) -> tuple[int, int]:
    """Samples per window unit and mel context frames of the naive sampler's windows (see
    :func:`wavedistill.generation.naive_geometry`): ``(1, 0)`` without mel conditioning."""
    t = cfg.teacher
    return (cfg.audio.hop_length, t.conditioning_context) if t.use_mel else (1, 0)


def steady_naive_steps(cfg: Config, receptive_field: int, count: int) -> tuple[range, int]:
    """``count`` steps of the naive sampler whose windows are full (past the receptive field
    and the mel context), and the frames of the clip that holds them."""
    hop, context = _naive_hop_and_context(cfg)
    start = receptive_field + (context + 1) * hop
    stop = start + count
    return range(start, stop), (stop - 1) // hop + context + 1


def student_flops(student: torch.nn.Module) -> FlopCount:
    """FLOPs per sample of the student's one-pass synthesis, as the student counts them (same
    conventions as :func:`teacher_flops`)."""
    return FlopCount({name: float(v) for name, v in student.flop_parts().items()})


# -- inputs ----------------------------------------------------------------------------------


def clip_features(cfg: Config, clip: Path = BUNDLED_CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip's audio ``(T,)`` at ``audio.sample_rate``, cut to whole frames, and its
    un-normalised log-mel ``(n_mels, T / hop)``."""
    from wavedistill.audio import load_audio
    from wavedistill.features import log_mel

    if not clip.is_file():
        raise UserError(f"{clip}: no such clip to condition the benchmark on; give --clip "
                        "(any speech recording)")
    hop = cfg.audio.hop_length
    audio = torch.from_numpy(load_audio(clip, cfg.audio.sample_rate))
    audio = audio[: len(audio) - len(audio) % hop]
    return audio, log_mel(audio, cfg.audio)


def tile(x: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """``x[..., offset:]`` repeated along the last axis and cut to ``length``: ``(..., length)``."""
    reps = math.ceil((length + offset) / x.shape[-1])
    return torch.cat([x] * reps, dim=-1)[..., offset:offset + length]


def benchmark_batch(cfg: Config, stats, frames: int, batch: int, device: torch.device,
                    clip: Path = BUNDLED_CLIP) -> dict[str, torch.Tensor]:
    """Real speech for a benchmark: ``{"audio": (B, frames * hop), "mel": (B, n_mels, frames)
    normalised, "speaker": (B,) zeros}``. Rows start at different frames of the tiled clip so a
    batch holds different inputs. ``stats`` None normalises by the clip's own statistics."""
    from wavedistill.features import FeatureStats

    audio, mel = clip_features(cfg, clip)
    if stats is None:
        stats = FeatureStats.compute([mel], std_floor=cfg.audio.stats_std_floor)
    hop, stride = cfg.audio.hop_length, max(1, mel.shape[-1] // max(batch, 1))
    mels = [tile(mel, frames, b * stride) for b in range(batch)]
    audios = [tile(audio, frames * hop, b * stride * hop) for b in range(batch)]
    return {"audio": torch.stack(audios).to(device),
            "mel": stats.normalize(torch.stack(mels)).to(device),
            "speaker": torch.zeros(batch, dtype=torch.long, device=device)}


# -- models ----------------------------------------------------------------------------------


@dataclass
class Subject:
    """A model to measure, with the config and feature statistics it works with."""

    kind: str  # "teacher" | "student"
    model: torch.nn.Module
    cfg: Config
    stats: Any  # FeatureStats, or None for random weights (the clip's own statistics)
    source: str

    @property
    def section(self):
        return self.cfg.teacher if self.kind == "teacher" else self.cfg.student

    def speaker(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["speaker"] if self.section.num_speakers > 0 else None

    def mel(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None if self.kind == "teacher" and not self.cfg.teacher.use_mel else batch["mel"]


def load_subject(kind: str, checkpoint: Path | None, config: Path | None,
                 device: torch.device) -> Subject | None:
    """The model of one kind from a checkpoint, or from a config with random weights (seeded),
    or None when neither is given."""
    from wavedistill.checkpoint import build_model, load_checkpoint, new_model

    if checkpoint is not None and config is not None:
        raise UserError(f"give --{kind} or --{kind}-config, not both")
    if checkpoint is not None:
        model, cfg, stats = build_model(load_checkpoint(checkpoint, expected_kind=kind))
        source = str(checkpoint)
    elif config is not None:
        cfg = load_config(config)
        torch.manual_seed(cfg.train.seed)
        model, stats, source = new_model(kind, cfg), None, f"{config} (random weights)"
    else:
        return None
    for p in model.parameters():
        p.requires_grad_(False)
    return Subject(kind, model.to(device).eval(), cfg, stats, source)


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Settings:
    """What the run measures and how (the ``benchmark`` arguments, whose defaults live in the
    command-line parser)."""

    seconds: float
    naive_steps: int
    batch: int
    repeats: int
    device: torch.device
    dtype: torch.dtype
    clip: Path = BUNDLED_CLIP  # the speech whose log-mel conditions every model

    def precision(self):
        """bf16 autocast for ``--dtype bfloat16``; float32 runs as is."""
        if self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def frames_for(seconds: float, cfg: Config) -> int:
    """Whole mel frames covering ``seconds`` (at least one)."""
    return max(1, round(seconds * cfg.audio.sample_rate / cfg.audio.hop_length))


def measure(fn: Callable[[], Any], samples_per_call: int, flops: FlopCount,
            subject: Subject, settings: Settings, peak_gflops: float,
            warmup: Callable[[], Any] | None = None, autocast: bool = True) -> dict[str, Any]:
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
        "rtf": subject.cfg.audio.sample_rate / rate,
        "flops_per_sample": flops_per_sample,
        "flops_by_part": flops.parts,
        "achieved_gflops": achieved,
        "fraction_of_peak": achieved / peak_gflops,
        "peak_rss_mb": memory.rss_mb,
        "seconds_per_call": timing.median,
        "spread": timing.spread,
        "samples_per_call": samples_per_call,
        "source": subject.source,
        "parameters": sum(p.numel() for p in subject.model.parameters()),
        "receptive_field": subject.model.receptive_field,
        "config": dataclasses.asdict(subject.section),
    }
    if memory.gpu_mb is not None:
        result["peak_gpu_mb"] = memory.gpu_mb
    return result


def _generator(settings: Settings) -> torch.Generator:
    return torch.Generator(device=settings.device).manual_seed(0)


def measure_student(student: Subject, settings: Settings, peak: float) -> dict[str, Any]:
    """One-pass synthesis of ``settings.seconds`` of audio per batch row."""
    frames = frames_for(settings.seconds, student.cfg)
    batch = benchmark_batch(student.cfg, student.stats, frames, settings.batch, settings.device,
                            settings.clip)
    mel, speaker = student.mel(batch), student.speaker(batch)

    def run():
        return student.model.synthesize(mel, speaker, generator=_generator(settings))

    samples = settings.batch * frames * student.cfg.audio.hop_length
    return measure(run, samples, student_flops(student.model), student, settings, peak)


def measure_teacher(teacher: Subject, settings: Settings, peak: float) -> dict[str, Any]:
    """Cached sequential sampling of ``settings.seconds`` of audio per batch row."""
    from wavedistill.generation import generate

    frames = frames_for(settings.seconds, teacher.cfg)
    batch = benchmark_batch(teacher.cfg, teacher.stats, frames, settings.batch, settings.device,
                            settings.clip)
    mel, speaker = teacher.mel(batch), teacher.speaker(batch)
    num_samples = frames * teacher.cfg.audio.hop_length
    # The cached sampler has its own bf16 path (bf16 weights, float32 residual stream and
    # distribution) rather than autocast.
    precision = "bfloat16" if settings.dtype == torch.bfloat16 else None

    def run(frames_used: int = frames):
        m = mel[..., :frames_used] if mel is not None else None
        return generate(teacher.model, m, speaker,
                        num_samples=frames_used * teacher.cfg.audio.hop_length,
                        generator=_generator(settings), precision=precision)

    # The warm-up only needs every code path once: one frame is enough.
    return measure(run, settings.batch * num_samples, teacher_flops(teacher.cfg), teacher,
                   settings, peak, warmup=lambda: run(1), autocast=False)


def measure_teacher_naive(teacher: Subject, settings: Settings, peak: float) -> dict[str, Any]:
    """``settings.naive_steps`` steps of the naive sampler in the steady state, the past being
    the bundled clip's audio; under autocast for ``--dtype bfloat16``."""
    from wavedistill.generation import sample_naive_steps

    steps, frames = steady_naive_steps(teacher.cfg, teacher.model.receptive_field,
                                       settings.naive_steps)
    batch = benchmark_batch(teacher.cfg, teacher.stats, frames, settings.batch, settings.device,
                            settings.clip)
    mel, speaker, audio = teacher.mel(batch), teacher.speaker(batch), batch["audio"]
    if mel is None:
        audio = audio[:, :frames]  # unconditional: the clip is ``frames`` samples long

    def run(count: int = len(steps)):
        sample_naive_steps(teacher.model, mel, speaker, audio, steps[:count],
                           _generator(settings))

    flops = naive_teacher_flops(teacher.cfg, teacher.model.receptive_field, steps, frames)
    return measure(run, settings.batch * len(steps), flops, teacher, settings, peak,
                   warmup=lambda: run(1))


# -- training throughput ---------------------------------------------------------------------


@contextmanager
def trainable(model: torch.nn.Module):
    """The model in training mode with gradients for the ``with`` block, frozen again after."""
    model.train().requires_grad_(True)
    try:
        yield model
    finally:
        model.eval().requires_grad_(False)


def measure_step(model: torch.nn.Module, objective, batch: dict[str, torch.Tensor],
                 settings: Settings) -> dict[str, Any]:
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
    return {"samples_per_s": samples / timing.median, "seconds_per_step": timing.median,
            "spread": timing.spread, "batch": batch["audio"].shape[0],
            "segment_length": batch["audio"].shape[1], "peak_rss_mb": memory.rss_mb}


def training_batch(subject: Subject, settings: Settings) -> dict[str, torch.Tensor]:
    """``settings.batch`` segments of ``data.segment_length`` samples of real speech."""
    cfg = subject.cfg
    frames = cfg.data.segment_length // cfg.audio.hop_length
    return benchmark_batch(cfg, subject.stats, frames, settings.batch, settings.device,
                           settings.clip)


def measure_training(teacher: Subject | None, student: Subject | None, settings: Settings
                     ) -> dict[str, Any]:
    """Training throughput: the teacher's maximum-likelihood step and the distillation step
    (the student's KL + power loss against the frozen teacher)."""
    out: dict[str, Any] = {}
    if teacher is not None:
        from wavedistill.teacher import MaximumLikelihood

        out["teacher_step"] = measure_step(teacher.model, MaximumLikelihood(),
                                           training_batch(teacher, settings), settings)
    if teacher is not None and student is not None:
        from wavedistill.distillation import Distillation, check_teacher_compatible

        check_teacher_compatible(teacher.cfg, student.cfg)
        objective = Distillation(teacher.model, student.cfg)
        batch = training_batch(student, settings)
        out["distillation_step"] = measure_step(student.model, objective, batch, settings)
    return out


# -- the run ---------------------------------------------------------------------------------


def run_benchmark(teacher: Subject | None, student: Subject | None, settings: Settings,
                  training: bool = False) -> dict[str, Any]:
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
    return f"cpu ({_cpu_model() or platform.machine()})"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# -- presentation ----------------------------------------------------------------------------


def format_table(report: dict[str, Any]) -> str:
    """The report as a terminal table."""
    peak = report["peak_matmul_gflops"]
    lines = [f"device {report['device']}, {report['threads']} thread(s), {report['dtype']}, "
             f"batch {report['batch']}; matmul peak {peak:.1f} GFLOP/s",
             f"{'model':<16}{'samples/s':>12}{'RTF':>10}{'MFLOP/sample':>14}"
             f"{'GFLOP/s':>10}{'% peak':>8}{'spread':>8}{'peak RSS MB':>13}"]
    for name, m in report["models"].items():
        lines.append(f"{name:<16}{m['samples_per_s']:>12,.0f}{m['rtf']:>10.3g}"
                     f"{m['flops_per_sample'] / 1e6:>14.3f}{m['achieved_gflops']:>10.2f}"
                     f"{100 * m['fraction_of_peak']:>7.1f}%{100 * m['spread']:>7.1f}%"
                     f"{m['peak_rss_mb']:>13,.0f}")
    if report["speedup_student_over_teacher"] is not None:
        lines.append(f"student / teacher (cached) speed-up: "
                     f"{report['speedup_student_over_teacher']:,.1f}x")
    for name, m in report.get("training", {}).items():
        lines.append(f"training {name}: {m['samples_per_s']:,.0f} samples/s "
                     f"(batch {m['batch']} x {m['segment_length']} samples, "
                     f"spread {100 * m['spread']:.1f}%)")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


# -- command line ----------------------------------------------------------------------------


def settings_from_args(args) -> Settings:
    """Validated :class:`Settings` from the ``benchmark`` arguments (see cli.py)."""
    if not args.seconds > 0:
        raise UserError(f"--seconds must be positive, got {args.seconds}")
    if args.naive_steps < 1:
        raise UserError(f"--naive-steps must be at least 1, got {args.naive_steps}")
    if args.batch < 1 or args.repeats < 1:
        raise UserError(f"--batch and --repeats must be at least 1, got {args.batch} and "
                        f"{args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    return Settings(seconds=args.seconds, naive_steps=args.naive_steps, batch=args.batch,
                    repeats=args.repeats, device=device, dtype=getattr(torch, args.dtype),
                    clip=args.clip or BUNDLED_CLIP)


def benchmark_cli(args) -> int:
    """``wavedistill benchmark``: measure, print the table, write ``--json``. ``--threads``
    holds for the run only (a notebook calling this keeps its own setting)."""
    settings = settings_from_args(args)
    teacher = load_subject("teacher", args.teacher, args.teacher_config, settings.device)
    student = load_subject("student", args.student, args.student_config, settings.device)
    if teacher is None and student is None:
        raise UserError("nothing to measure: give --teacher/--teacher-config and/or "
                        "--student/--student-config")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads or threads)
        report = run_benchmark(teacher, student, settings, training=args.training)
    finally:
        torch.set_num_threads(threads)
    print(format_table(report))
    if args.json is not None:
        write_json(report, args.json)
    return 0
