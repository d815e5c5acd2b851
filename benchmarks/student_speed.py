"""Student synthesis speed: samples per second of the IAF student's one parallel pass.

Three comparisons, each side by side in one run on the same random-weight student, mel and
noise (variants alternate within each repeat, so a busy machine slows them alike):

1. Variants at ``--batch`` clips (outputs checked against each other before timing):

   - ``straightforward``: the student written the textbook way (kept here only as the
     yardstick): the mel upsampled to sample rate, then per layer a 1x1 conditioning conv of
     the upsampled mel, the dilated conv padded on both sides and cropped, ``tanh * sigmoid``,
     the residual 1x1 conv;
   - ``module``: :meth:`IAFStudent.forward` under ``inference_mode`` (the training path:
     conditioning projected at frame rate, oneDNN convolutions);
   - ``synthesize``: :meth:`IAFStudent.synthesize_from_noise`, the shipped path (see
     :func:`wavedistill.models.fused_flows.fused_flow`).

   The table gives the median samples/s of ``--repeats`` runs, the spread
   ((max - min) / median), GFLOP/s from :func:`wavedistill.bench.profiling.student_flops`, the share
   of two matrix-product peaks timed in the same run (fastest of ``--repeats`` 2048 x 2048
   products): ``torch.mm`` (:func:`wavedistill.bench.profiling.matmul_peak_gflops`, the yardstick of
   ``wavedistill benchmark``) and oneDNN's fp32 product (the kernels the shipped path calls;
   where ``torch.mm``'s sgemm runs at AVX2 speed on an AVX-512 CPU, oneDNN is about twice as
   fast), and the ratio to the straightforward version.
2. Batching: ``synthesize`` of 1 clip and of ``--batch-large`` clips, total samples/s and their
   ratio; each clip of the batch is also synthesised alone from the same noise and mel, and the
   largest difference is reported.
3. bfloat16, where the CPU computes it natively (:func:`wavedistill.precision.is_native`):
   ``synthesize`` in float32 and with a bfloat16 copy of the model, samples/s, their ratio and
   the signal-to-error ratio of the bf16 audio against the float32 audio,
   ``10 log10(sum x^2 / sum (x_bf16 - x)^2)`` dB.

The CPU's model name and flags (avx2, avx512f, avx512_bf16) head the output and the JSON.

Usage::

    python benchmarks/student_speed.py --threads 2          # LJSpeech recipe (Parallel WaveNet)
    python benchmarks/student_speed.py --sizes ljspeech clarinet --seconds 2 --threads 2 \\
        --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from wavedistill.bench.profiling import (
    PEAK_SIZE,
    cpu_model,
    matmul_peak_gflops,
    student_flops,
    time_call,
    time_round_robin,
)
from wavedistill.config import Config, load_config
from wavedistill.data.features import frames_for
from wavedistill.models.student import IAFStudent
from wavedistill.precision import cpu_flags, is_native

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "ljspeech" / "conf" / "student.yaml"
AUDIO_24K = [
    "audio.sample_rate=24000",
    "audio.hop_length=300",
    "audio.n_fft=2048",
    "audio.win_length=1200",
    "audio.fmax=12000",
    "audio.n_mels=80",
    "data.segment_length=9000",
]
# name -> (config file, overrides)
SIZES: dict[str, tuple[Path | None, list[str]]] = {
    "ljspeech": (RECIPE, []),  # Parallel WaveNet's 10/10/10/30 layers, 64 channels, 22.05 kHz
    "parallel-wavenet": (
        None,
        AUDIO_24K
        + [
            "student.flow_layers=[10,10,10,30]",
            "student.channels=64",
            "student.kernel_size=3",
            "student.dilation_cycle=10",
        ],
    ),
    "clarinet": (
        None,
        AUDIO_24K
        + [
            "student.flow_layers=[10,10,10,10,10,10]",
            "student.channels=64",
            "student.kernel_size=3",
            "student.dilation_cycle=10",
        ],
    ),
}
CPU = torch.device("cpu")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


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
            pre = pre[..., : h.shape[-1]] + F.conv1d(up, proj[start : start + G])
            a, b = pre.chunk(2, dim=1)
            h = h + block.output(torch.tanh(a) * torch.sigmoid(b))
            start += G
        mu, log_s = flow.output(F.relu(h)).unbind(1)
        x = x * log_s.clamp_min(flow.log_scale_min).exp() + mu
    return x


# -- the machine ---------------------------------------------------------------------------------


def cpu_info() -> dict:
    """Model name and the flags that decide the kernels (x86 /proc/cpuinfo; empty elsewhere)."""
    flags = cpu_flags()
    return {"model": cpu_model(), **{flag: flag in flags for flag in CPU_FLAGS}}


def onednn_peak_gflops(repeats: int) -> float | None:
    """GFLOP/s of oneDNN's fp32 2048 x 2048 product in its fastest repeat (None without it)."""
    n = PEAK_SIZE["cpu"]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    try:
        linear = torch.ops.mkldnn._linear_pointwise
        timing = time_call(lambda: linear(a, b, None, "none", [], ""), CPU, repeats, warmup=2)
    except (AttributeError, RuntimeError):
        return None
    return 2 * n**3 / timing.best / 1e9


# -- measurements --------------------------------------------------------------------------------


def build(size: str) -> tuple[Config, IAFStudent]:
    path, overrides = SIZES[size]
    cfg = load_config(path, overrides)
    torch.manual_seed(0)
    student = IAFStudent.from_config(cfg).eval()
    for flow in student.flows:  # weights of a trained scale, so every variant does real work
        torch.nn.init.normal_(flow.output.weight, std=0.1)
    return cfg, student


def clips(student: IAFStudent, cfg: Config, seconds: float, batch: int) -> tuple[Tensor, Tensor]:
    """Noise ``(batch, T)`` and mel ``(batch, n_mels, F)``, different for every clip."""
    frames = frames_for(seconds, cfg.audio)
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(batch, cfg.audio.n_mels, frames, generator=g)
    z = student.sample_noise((batch, frames * cfg.audio.hop_length), g)
    return z, mel


def rate_row(flops: float, samples: int, timing, peaks: dict[str, float | None]) -> dict:
    rate = samples / timing.median
    gflops = flops * rate / 1e9
    onednn = peaks["onednn"]
    return {
        "samples_per_s": rate,
        "spread": timing.spread,
        "gflops": gflops,
        "peak_share": gflops / peaks["mm"],
        "onednn_peak_share": gflops / onednn if onednn else None,
    }


def measure_variants(
    size: str, seconds: float, batch: int, repeats: int, peaks: dict[str, float | None]
) -> list[dict]:
    cfg, student = build(size)
    z, mel = clips(student, cfg, seconds, batch)
    with torch.inference_mode():
        variants = {
            "straightforward": lambda: straightforward(student, z, mel),
            "module": lambda: student(z, mel)[0],
            "synthesize": lambda: student.synthesize_from_noise(z, mel),
        }
        ref = variants["module"]().clamp(-1, 1)
        # the shipped path must equal the module path to float tolerance; the textbook one
        # sums in another order (upsampled mel, then projected)
        for name, tolerance in (("straightforward", 1e-4), ("synthesize", 1e-5)):
            err = (variants[name]().clamp(-1, 1) - ref).abs().max().item()
            if err > tolerance:
                raise SystemExit(f"{size}: {name} differs from module by {err:.2e}")
        timings = time_round_robin(variants, CPU, repeats)
    flops = student_flops(student).total
    base = timings["straightforward"].median
    return [
        {
            "size": size,
            "variant": name,
            "batch": batch,
            "samples": z.shape[-1],
            "flops_per_sample": flops,
            "receptive_field": student.receptive_field,
            **rate_row(flops, z.numel(), timing, peaks),
            "vs_straightforward": base / timing.median,
        }
        for name, timing in timings.items()
    ]


def measure_batching(
    size: str, seconds: float, large: int, repeats: int, peaks: dict[str, float | None]
) -> dict:
    cfg, student = build(size)
    z, mel = clips(student, cfg, seconds, large)
    with torch.inference_mode():
        together = student.synthesize_from_noise(z, mel)
        alone = torch.cat(
            [student.synthesize_from_noise(z[i : i + 1], mel[i : i + 1]) for i in range(large)]
        )
        timings = time_round_robin(
            {
                1: lambda: student.synthesize_from_noise(z[:1], mel[:1]),
                large: lambda: student.synthesize_from_noise(z, mel),
            },
            CPU,
            repeats,
        )
    flops = student_flops(student).total
    rows = {
        b: {"batch": b, **rate_row(flops, b * z.shape[-1], t, peaks)} for b, t in timings.items()
    }
    return {
        "size": size,
        "rows": list(rows.values()),
        "ratio": rows[large]["samples_per_s"] / rows[1]["samples_per_s"],
        "max_abs_diff_batched_vs_alone": (together - alone).abs().max().item(),
    }


def signal_to_error_db(reference: Tensor, other: Tensor) -> float:
    err = (other.double() - reference.double()).pow(2).sum()
    return 10 * math.log10(reference.double().pow(2).sum() / err) if err > 0 else math.inf


def measure_bf16(size: str, seconds: float, repeats: int) -> dict | None:
    if not is_native(torch.bfloat16, CPU):
        return None
    cfg, student = build(size)
    half = copy.deepcopy(student).to(torch.bfloat16)
    z, mel = clips(student, cfg, seconds, 1)
    with torch.inference_mode():
        fp32 = student.synthesize_from_noise(z, mel)
        bf16 = half.synthesize_from_noise(z, mel.bfloat16()).float()
        timings = time_round_robin(
            {
                "float32": lambda: student.synthesize_from_noise(z, mel),
                "bfloat16": lambda: half.synthesize_from_noise(z, mel.bfloat16()),
            },
            CPU,
            repeats,
        )
    rates = {name: z.numel() / t.median for name, t in timings.items()}
    return {
        "size": size,
        "samples_per_s": rates,
        "spread": {name: t.spread for name, t in timings.items()},
        "ratio": rates["bfloat16"] / rates["float32"],
        "ser_db": signal_to_error_db(fp32, bf16),
    }


# -- report --------------------------------------------------------------------------------------


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["ljspeech"], choices=list(SIZES))
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--batch-large", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_info()
    peaks = {
        "mm": matmul_peak_gflops(CPU, torch.float32, args.repeats),
        "onednn": onednn_peak_gflops(args.repeats),
    }
    rows, batching, bf16 = [], [], []
    for size in args.sizes:
        rows += measure_variants(size, args.seconds, args.batch, args.repeats, peaks)
        batching.append(measure_batching(size, args.seconds, args.batch_large, args.repeats, peaks))
        bf16.append(measure_bf16(size, args.seconds, args.repeats))

    flags = " ".join(f"{f}={'yes' if cpu[f] else 'no'}" for f in CPU_FLAGS)
    onednn = "-" if peaks["onednn"] is None else f"{peaks['onednn']:.1f}"
    print(f"{cpu['model']}: {flags}")
    print(
        f"threads {torch.get_num_threads()}; fp32 {PEAK_SIZE['cpu']}x{PEAK_SIZE['cpu']} "
        f"product peak: torch.mm {peaks['mm']:.1f} GFLOP/s, oneDNN {onednn} GFLOP/s"
    )
    print(
        f"\n{'size':<18}{'variant':<17}{'batch':>6}{'samples/s':>11}{'spread':>8}"
        f"{'MFLOP/smp':>11}{'GFLOP/s':>9}{'of mm':>7}{'of 1DNN':>9}{'x base':>8}"
    )
    for r in rows:
        print(
            f"{r['size']:<18}{r['variant']:<17}{r['batch']:>6}{r['samples_per_s']:>11.0f}"
            f"{r['spread']:>8.2f}{r['flops_per_sample'] / 1e6:>11.3f}{r['gflops']:>9.1f}"
            f"{share(r['peak_share']):>7}{share(r['onednn_peak_share']):>9}"
            f"{r['vs_straightforward']:>8.2f}"
        )
    print(
        f"\n{'size':<18}{'batch':>6}{'samples/s':>11}{'spread':>8}{'of mm':>7}"
        f"{'ratio':>7}  batched vs alone"
    )
    for b in batching:
        for r in b["rows"]:
            print(
                f"{b['size']:<18}{r['batch']:>6}{r['samples_per_s']:>11.0f}{r['spread']:>8.2f}"
                f"{share(r['peak_share']):>7}"
                + (
                    f"{b['ratio']:>7.2f}  {b['max_abs_diff_batched_vs_alone']:.1e}"
                    if r is b["rows"][-1]
                    else ""
                )
            )
    print(f"\n{'size':<18}{'fp32 smp/s':>11}{'bf16 smp/s':>11}{'ratio':>7}{'SER dB':>8}")
    for size, b in zip(args.sizes, bf16, strict=True):
        if b is None:
            print(f"{size:<18}  bfloat16 is not native on this CPU")
            continue
        print(
            f"{size:<18}{b['samples_per_s']['float32']:>11.0f}"
            f"{b['samples_per_s']['bfloat16']:>11.0f}{b['ratio']:>7.2f}{b['ser_db']:>8.1f}"
        )
    if args.json:
        report = {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpu": cpu,
            "threads": torch.get_num_threads(),
            "peak_matmul_gflops": peaks["mm"],
            "peak_onednn_gflops": peaks["onednn"],
            "seconds": args.seconds,
            "results": rows,
            "batching": batching,
            "bf16": bf16,
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
