"""Student synthesis speed: samples per second of the IAF student's one parallel pass.

Compares, side by side in one run, on the same random-weight student, mel and noise:

- ``straightforward``: the student written the textbook way (kept here only as the yardstick):
  the mel upsampled to sample rate, then per layer a 1x1 conditioning conv of the upsampled mel,
  the dilated conv padded on both sides and cropped, ``tanh * sigmoid``, the residual 1x1 conv;
- ``module``: :meth:`IAFStudent.forward` under ``inference_mode`` (the training path:
  conditioning projected at frame rate, oneDNN convolutions);
- ``synthesize``: :meth:`IAFStudent.synthesize`, the shipped path (fused taps and gate, time
  tiles; see :func:`wavedistill.student.fused_flow`).

The three outputs are checked against each other before timing. Variants alternate within each
repeat so that a noisy machine slows them alike; the table gives the median samples/s of
``--repeats`` runs, the spread ((max - min) / median), GFLOP/s from
:meth:`IAFStudent.flops_per_sample`, the share of the fp32 matrix-product peak timed in the same
run, and the ratio to the straightforward version.

Usage::

    python benchmarks/student_speed.py                          # Parallel WaveNet layout, 1 s
    python benchmarks/student_speed.py --sizes parallel-wavenet clarinet --seconds 2 \\
        --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from wavedistill.config import Config, load_config
from wavedistill.student import IAFStudent

AUDIO_24K = ["audio.sample_rate=24000", "audio.hop_length=300", "audio.n_fft=2048",
             "audio.win_length=1200", "audio.fmax=12000", "audio.n_mels=80",
             "data.segment_length=9000"]
SIZES: dict[str, list[str]] = {
    "parallel-wavenet": AUDIO_24K + ["student.flow_layers=[10,10,10,30]", "student.channels=64",
                                     "student.kernel_size=3", "student.dilation_cycle=10"],
    "clarinet": AUDIO_24K + ["student.flow_layers=[10,10,10,10,10,10]", "student.channels=64",
                             "student.kernel_size=3", "student.dilation_cycle=10"],
}
PEAK_SIZE = 2048


# -- the yardstick -------------------------------------------------------------------------------


def straightforward(student: IAFStudent, z: Tensor, mel: Tensor) -> Tensor:
    """The textbook student pass with ``student``'s weights: ``z (B, T)`` -> ``x (B, T)``."""
    cond = student.conditioner
    m = cond.context(mel) if cond.context is not None else mel
    up = cond.upsampler(m)  # (B, n_mels, T): the mel at sample rate
    proj = cond.projection.weight  # (sum L*G, n_mels, 1)
    x, start = z, 0
    for flow in student.flows:
        h = flow.input_conv(F.pad(x[:, :-1], (1, 0)).unsqueeze(1))
        for block in flow.stack.blocks:
            G = block.gate_channels
            d, pad = block.dilated.dilation[0], block.dilated.left_padding
            pre = F.conv1d(h, block.dilated.weight, block.dilated.bias, dilation=d, padding=pad)
            pre = pre[..., :h.shape[-1]] + F.conv1d(up, proj[start:start + G])
            a, b = pre.chunk(2, dim=1)
            h = h + block.output(torch.tanh(a) * torch.sigmoid(b))
            start += G
        mu, log_s = flow.output(F.relu(h)).unbind(1)
        x = x * log_s.clamp_min(flow.log_scale_min).exp() + mu
    return x


# -- timing --------------------------------------------------------------------------------------


def matmul_peak_gflops(repeats: int) -> float:
    a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * PEAK_SIZE**3 / min(times) / 1e9


def time_variants(variants: dict[str, Callable[[], Tensor]], repeats: int
                  ) -> dict[str, list[float]]:
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def measure(size: str, seconds: float, batch: int, repeats: int, peak: float) -> list[dict]:
    cfg: Config = load_config(None, SIZES[size])
    torch.manual_seed(0)
    student = IAFStudent.from_config(cfg).eval()
    for flow in student.flows:  # weights of a trained scale, so every variant does real work
        torch.nn.init.normal_(flow.output.weight, std=0.1)
    frames = max(1, round(seconds * cfg.audio.sample_rate / cfg.audio.hop_length))
    T = frames * cfg.audio.hop_length
    mel = torch.randn(batch, cfg.audio.n_mels, frames)
    z = student.sample_noise((batch, T), torch.Generator().manual_seed(0))

    with torch.inference_mode():
        variants = {
            "straightforward": lambda: straightforward(student, z, mel),
            "module": lambda: student(z, mel)[0],
            "synthesize": lambda: student.synthesize_from_noise(z, mel),
        }
        ref = variants["module"]().clamp(-1, 1)
        for name in ("straightforward", "synthesize"):
            err = (variants[name]().clamp(-1, 1) - ref).abs().max().item()
            if err > 1e-3:
                raise SystemExit(f"{size}: {name} differs from module by {err:.2e}")
        times = time_variants(variants, repeats)

    flops = student.flops_per_sample()
    base = batch * T / statistics.median(times["straightforward"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = batch * T / med
        rows.append({"size": size, "variant": name, "batch": batch, "samples": T,
                     "samples_per_s": rate, "spread": (max(ts) - min(ts)) / med,
                     "flops_per_sample": flops, "gflops": flops * rate / 1e9,
                     "peak_share": flops * rate / 1e9 / peak, "vs_straightforward": rate / base,
                     "receptive_field": student.receptive_field})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["parallel-wavenet"], choices=list(SIZES))
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.repeats)
    rows = [r for size in args.sizes
            for r in measure(size, args.seconds, args.batch, args.repeats, peak)]
    print(f"threads {torch.get_num_threads()}, fp32 matmul peak {peak:.1f} GFLOP/s "
          f"({PEAK_SIZE}x{PEAK_SIZE})")
    print(f"{'size':<18}{'variant':<17}{'samples/s':>11}{'spread':>8}{'MFLOP/smp':>11}"
          f"{'GFLOP/s':>9}{'of peak':>9}{'x base':>8}")
    for r in rows:
        print(f"{r['size']:<18}{r['variant']:<17}{r['samples_per_s']:>11.0f}{r['spread']:>8.2f}"
              f"{r['flops_per_sample'] / 1e6:>11.3f}{r['gflops']:>9.1f}"
              f"{r['peak_share']:>9.0%}{r['vs_straightforward']:>8.2f}")
    if args.json:
        report = {"platform": platform.platform(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "peak_matmul_gflops": peak,
                  "seconds": args.seconds, "results": rows}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
