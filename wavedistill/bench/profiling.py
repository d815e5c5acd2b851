"""How fast, how big, how much work: the measuring tools of ``wavedistill benchmark`` and of
every script in ``benchmarks/``.

- Timing (:func:`time_call`, :func:`time_round_robin`): untimed warm-up calls (allocator,
  kernels, caches), then timed repeats, each between two device synchronisations; a
  :class:`Timing` reports the median, the fastest repeat and the spread (max - min) / median.
- Peak memory (:class:`PeakMemory`): the process's peak resident memory while a ``with`` block
  runs (Linux: the high-water mark is reset on entry through ``/proc/self/clear_refs``;
  elsewhere it is the peak of the process so far), and on a GPU ``torch.cuda``'s peak.
- The device's peak (:func:`matmul_peak_gflops`): GFLOP/s of a large square matrix product in
  its fastest repeat, the yardstick for achieved GFLOP/s.
- FLOP counting, per audio sample, multiply-add = 2 FLOPs, of both models.

Teacher (:func:`teacher_flops`, from the config). For ``L`` layers of kernel ``k``, residual
``R``, gate ``G`` and skip ``S`` channels: the dilated convolutions ``2 k R G`` per layer; the
conditioning added before the gate (one multiply-add per gate channel: the channel-shared
upsampling filter times the frame-rate projection) ``2 G`` per layer; the folded residual+skip
1x1 ``2 (G/2)(R + S)`` per layer (``2 (G/2) S`` for the last, which has no residual output); the
input 1x1 ``2 R``; and the output head. Work on mel frames (context convolution and the
projection to all layers' gates) happens once per frame and is divided by ``hop_length``.
Element-wise work (gates, additions, the output distribution) is not counted. The naive
sampler (:func:`naive_teacher_flops`) reruns the parallel pass over the whole frames one step
depends on -- the windows of :func:`wavedistill.models.sampling.naive_windows`, the very function
the sampler uses -- so its count is the mean window length times the per-sample count.

Student (:func:`student_flops`, from the model). Per flow: input 1x1 ``2C``; per layer the
dilated conv ``2 k C G``, the conditioning added before the gate ``2G`` and the residual 1x1
``2 (G/2) C``; the output 1x1 ``2 * 2C``. Mel work (context conv and the projection to every
layer of every flow) runs once per frame and is divided by ``hop``. Element-wise work (gates,
the affine maps) is not counted.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wavedistill.config import Config
from wavedistill.models.distributions import build_distribution
from wavedistill.models.sampling import naive_hop_and_context, naive_windows

if TYPE_CHECKING:
    from wavedistill.models.student import IAFStudent

# Square matrix size for the peak measurement: large enough to saturate the device's matrix
# units (a CPU reaches its plateau well before 2048; a data-centre GPU needs about 8192).
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}


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


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``, between two synchronisations of ``device`` (kernels
    queued before the call must not be billed to it, nor its own left running)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed between two
    synchronisations of ``device``."""
    return time_round_robin({"call": fn}, device, repeats, warmup)["call"]


def time_round_robin(
    calls: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Each call ``warmup`` times untimed, then ``repeats`` rounds in which the calls take turns,
    each timed as in :func:`time_call`. Taking turns makes a machine busy with other work slow
    them alike, so their ratios stay meaningful."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(_timed(fn, device))
    return {name: Timing(ts) for name, ts in times.items()}


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


def matmul_peak_gflops(
    device: torch.device,
    dtype: torch.dtype,
    repeats: int = 5,
    size: int | None = None,
    budget_s: float = 4.0,
) -> float:
    """GFLOP/s of a square matrix product (2 n^3 FLOPs) in its fastest repeat: a peak is what
    the device reaches, and a busy machine only ever slows it down.

    ``n`` is ``size`` (default per device type), shrunk by halves until the ``repeats + 2``
    products fit in about ``budget_s`` seconds as estimated from one probe product, so that
    the measurement stays short even where a dtype runs hundreds of times slower."""
    n = size or PEAK_SIZE.get(device.type, 4096)
    probe = min(n, 256)
    seconds = _mm_time(probe, device, dtype)
    while n > probe and seconds * (n / probe) ** 3 * (repeats + 2) > budget_s:
        n //= 2
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timing = time_call(lambda: torch.mm(a, b, out=out), device, repeats, warmup=2)
    return 2 * n**3 / timing.best / 1e9


def _mm_time(n: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds of one ``n x n`` product (after one untimed call)."""
    a = torch.ones(n, n, device=device, dtype=dtype)
    torch.mm(a, a)
    return time_call(lambda: torch.mm(a, a), device, 1, warmup=0).best


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo, else the platform's answer), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


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


def naive_teacher_flops(
    cfg: Config, teacher: torch.nn.Module, steps: range, frames: int
) -> FlopCount:
    """FLOPs per sample of the naive sampler drawing ``steps`` of a clip of ``frames`` frames
    (samples without mel) with ``teacher`` (built from ``cfg``): every step reruns the parallel
    pass, frame-rate conditioning included, over the sampler's own window
    (:func:`wavedistill.models.sampling.naive_windows`); the mean window length times one sample of
    the parallel pass."""
    hop, _ = naive_hop_and_context(teacher)
    windows = naive_windows(teacher, steps, frames)
    mean_window = sum((f1 - f0) * hop for f0, f1 in windows) / len(steps)
    return FlopCount(
        {name: value * mean_window for name, value in teacher_flops(cfg).parts.items()}
    )


def student_flops(student: IAFStudent) -> FlopCount:
    """FLOPs per sample of an :class:`~wavedistill.models.student.IAFStudent`'s one-pass synthesis,
    read off its modules (what is counted: see the module docstring)."""
    parts = {
        "input_1x1": 0.0,
        "dilated_convs": 0.0,
        "conditioning_add": 0.0,
        "residual_1x1": 0.0,
        "output_1x1": 0.0,
    }
    for flow in student.flows:
        C, k = flow.input_conv.out_channels, flow.stack.kernel_size
        G, L = flow.stack.gate_channels, len(flow.stack.blocks)
        parts["input_1x1"] += 2.0 * C
        parts["dilated_convs"] += 2.0 * k * C * G * L
        parts["conditioning_add"] += 2.0 * G * L
        parts["residual_1x1"] += 2.0 * (G // 2) * C * L
        parts["output_1x1"] += 2.0 * C * 2  # C -> (mu, log s)
    cond = student.conditioner
    frame_flops = 2.0 * student.n_mels * cond.out_channels
    if cond.context is not None:
        frame_flops += 2.0 * cond.context.weight.numel()
    parts["conditioning_frames"] = frame_flops / student.hop
    return FlopCount(parts)
