"""Teacher training throughput: forward + backward + Adam step, samples per second.

Compares, side by side in one run and on the same batch:

- ``straightforward``: a textbook WaveNet (kept here only as the yardstick): mel upsampled to
  sample rate by transposed convolutions, a 1x1 conditioning conv per layer on the upsampled mel,
  the dilated conv padded then cropped, separate residual and skip 1x1 convs;
- ``wavedistill``: :class:`wavedistill.teacher.WaveNetTeacher` (conditioning projected at frame
  rate and upsampled by a channel-shared filter, one fused residual+skip 1x1), in float32 and
  under bfloat16 autocast.

Both use the same output head and loss (the config's discretized mixture of logistics), the same
layer sizes and the same Adam optimiser. Each variant runs ``--warmup`` untimed steps; then the
variants take turns for ``--repeats`` rounds (one timed step each per round, so that machine noise
hits them alike); the table gives the median and the spread ((max - min) / median).

Usage::

    python benchmarks/train_speed.py                       # small and LJSpeech sizes
    python benchmarks/train_speed.py --sizes small --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavedistill.config import Config, load_config
from wavedistill.distributions import build_distribution
from wavedistill.networks import count_parameters, dilation_cycle
from wavedistill.teacher import WaveNetTeacher

# name -> (config overrides, batch size); the segment is data.segment_length
SIZES: dict[str, tuple[list[str], int]] = {
    "small": (["teacher.layers=24", "teacher.stacks=4", "teacher.kernel_size=3",
               "teacher.residual_channels=64", "teacher.gate_channels=128",
               "teacher.skip_channels=64", "teacher.num_mixtures=10", "audio.n_mels=80",
               "audio.sample_rate=16000", "audio.hop_length=200",
               "teacher.upsample_factors=[4,5,10]", "data.segment_length=8000"], 4),
    "ljspeech": (["teacher.layers=30", "teacher.stacks=3", "teacher.kernel_size=3",
                  "teacher.residual_channels=512", "teacher.gate_channels=1024",
                  "teacher.skip_channels=256", "teacher.num_mixtures=10", "audio.n_mels=80",
                  "audio.sample_rate=22050", "audio.hop_length=256", "audio.win_length=1024",
                  "audio.fmax=8000", "teacher.upsample_factors=[4,4,16]",
                  "student.upsample_factors=[4,4,16]", "data.segment_length=7680"], 1),
}


# -- the yardstick ---------------------------------------------------------------------------


class StraightforwardWaveNet(nn.Module):
    """A textbook mel-conditioned WaveNet with the same sizes as the teacher.

    audio ``(B, T)``, mel ``(B, n_mels, F)`` -> parameters ``(B, P, T)``.
    """

    def __init__(self, cfg: Config, num_params: int):
        super().__init__()
        t, n_mels = cfg.teacher, cfg.audio.n_mels
        R, G, S, k = t.residual_channels, t.gate_channels, t.skip_channels, t.kernel_size
        self.kernel_size = k
        self.dilations = dilation_cycle(t.layers, t.layers // t.stacks)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(1, 1, (1, f), stride=(1, f)) for f in t.upsample_factors)
        self.input_conv = nn.Conv1d(1, R, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(R, G, k, dilation=d, padding=(k - 1) * d) for d in self.dilations)
        self.cond = nn.ModuleList(nn.Conv1d(n_mels, G, 1, bias=False) for _ in self.dilations)
        self.res = nn.ModuleList(nn.Conv1d(G // 2, R, 1) for _ in self.dilations)
        self.skip = nn.ModuleList(nn.Conv1d(G // 2, S, 1) for _ in self.dilations)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(S, S, 1), nn.ReLU(),
                                  nn.Conv1d(S, num_params, 1))

    def forward(self, audio: Tensor, mel: Tensor) -> Tensor:
        T = audio.shape[-1]
        c = mel.unsqueeze(1)  # (B, 1, n_mels, F)
        for up in self.upsample:
            c = up(c)
        c = c.squeeze(1)  # (B, n_mels, T)
        x = self.input_conv(F.pad(audio[:, None, :-1], (1, 0)))
        skips = 0
        for conv, cond, res, skip in zip(self.dilated, self.cond, self.res, self.skip,
                                         strict=True):
            h = conv(x)[..., :T] + cond(c)
            a, b = h.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            skips = skips + skip(z)
            x = (x + res(z)) * math.sqrt(0.5)
        return self.head(skips)


# -- measuring -------------------------------------------------------------------------------


def train_step_fn(model: nn.Module, forward: Callable[[], Tensor],
                  loss_of: Callable[[Tensor], Tensor], autocast: bool) -> Callable[[], None]:
    """One closure = forward + loss + backward + Adam step."""
    # fused Adam (one kernel over all parameters; CPU support since torch 2.4) for every variant
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            params = forward()
        loss = loss_of(params)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_round_robin(steps: dict[str, Callable[[], None]], warmup: int, repeats: int
                     ) -> dict[str, list[float]]:
    """Seconds per step of each variant. Variants take turns, one step each per round, so a
    noisy machine slows them alike and their ratios stay meaningful."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def build_variant(variant: str, cfg: Config, num_params: int) -> nn.Module:
    torch.manual_seed(0)
    if variant == "straightforward":
        return StraightforwardWaveNet(cfg, num_params)
    return WaveNetTeacher.from_config(cfg)


def measure_size(name: str, variants: list[str], warmup: int, repeats: int) -> list[dict]:
    overrides, batch = SIZES[name]
    cfg = load_config(None, overrides)
    segment = cfg.data.segment_length
    g = torch.Generator().manual_seed(0)
    audio = (torch.rand(batch, segment, generator=g) * 2 - 1) * 0.5
    mel = torch.randn(batch, cfg.audio.n_mels, segment // cfg.audio.hop_length, generator=g)
    dist = build_distribution(cfg.teacher)

    def loss_of(params: Tensor) -> Tensor:
        return -dist.log_prob(params, audio).mean()

    models, steps = {}, {}
    for variant in variants:
        model = models[variant] = build_variant(variant, cfg, dist.num_params)
        steps[variant] = train_step_fn(model, lambda m=model: m(audio, mel), loss_of,
                                       autocast=variant.endswith("bf16"))
    times = time_round_robin(steps, warmup, repeats)
    rows = []
    for variant in variants:
        median = statistics.median(times[variant])
        rows.append({
            "size": name, "variant": variant, "batch": batch, "segment": segment,
            "parameters": count_parameters(models[variant]), "step_s": median,
            "spread": (max(times[variant]) - min(times[variant])) / median,
            "samples_per_s": batch * segment / median, "times": times[variant],
        })
    base = next((r for r in rows if r["variant"] == "straightforward"), None)
    for r in rows:
        r["speedup"] = base["step_s"] / r["step_s"] if base else None
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'size':<9} {'variant':<17} {'batch x T':>11} {'params':>10} {'step s':>8} " \
           f"{'spread':>7} {'samples/s':>10} {'vs straight':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['size']:<9} {r['variant']:<17} {r['batch']:>4} x {r['segment']:<5}"
              f"{r['parameters']:>10,} {r['step_s']:>8.3f} {r['spread']:>6.0%} "
              f"{r['samples_per_s']:>10,.0f} {speed:>11}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--variants", nargs="+", default=["straightforward", "wavedistill",
                                                      "wavedistill-bf16"],
                   choices=["straightforward", "wavedistill", "wavedistill-bf16"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.sizes:
        rows += measure_size(name, args.variants, args.warmup, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    print_table(rows)
    if args.json:
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
        args.json.write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
