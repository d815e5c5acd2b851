"""Teacher sampling speed: samples per second of one-sample-per-step generation.

Compares, side by side in one run, on the same random-weight teacher and the same mel:

- ``straightforward``: a per-layer cached sampler written the textbook way (kept here only as
  the yardstick, in the manner of r9y9/wavenet_vocoder's incremental path): the mel upsampled
  to sample rate once, then per step and layer a queue of past inputs rolled by concatenation,
  the dilated conv as one ``linear`` on the queue's taps, a 1x1 conditioning projection of that
  sample's mel column, the gate, the residual/skip ``linear``, and the skips summed per layer;
- ``cached``: :func:`wavedistill.models.sampling.generate` (fused taps, frame-rate conditioning, one
  skip product per step, preallocated buffers), exact float32;
- ``cached-bf16``: the same with ``precision="bfloat16"`` (bf16 matrix products).

Every variant draws from the output head each step, so the numbers include sampling. Variants
alternate within each repeat so that a noisy machine slows them alike; the table gives the
median samples/s of ``--repeats`` runs, the spread ((max - min) / median) and the ratio to the
straightforward sampler. The straightforward sampler's parameters are checked against the
parallel pass before timing.

Usage::

    python benchmarks/sampling_speed.py                          # small and paper sizes, B 1, 8
    python benchmarks/sampling_speed.py --sizes small --batches 1 --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from wavedistill.bench.profiling import time_round_robin
from wavedistill.config import Config, load_config
from wavedistill.models.sampling import generate
from wavedistill.models.teacher import WaveNetTeacher

# The small teacher's one definition, shared with train_speed.py and `wavedistill benchmark`.
SMALL_TEACHER = Path(__file__).resolve().parent / "configs" / "teacher_small.yaml"
PAPER_TEACHER = Path(__file__).resolve().parent / "configs" / "teacher_paper.yaml"

# name -> (config file or None, config overrides, steps timed per run)
SIZES: dict[str, tuple[Path | None, list[str], int]] = {
    "small": (SMALL_TEACHER, [], 800),
    # Parallel WaveNet's teacher: 30 layers in 3 cycles, 512 residual / 1024 gate / 256 skip;
    # 512 steps = one block of the widest dilation, so blocked past taps are paid in full
    "paper": (PAPER_TEACHER, [], 512),
}


# -- the yardstick ---------------------------------------------------------------------------


class StraightforwardSampler:
    """Per-layer cached sampling without fusion, on a :class:`WaveNetTeacher`'s weights.

    State: one queue ``(B, R, (k-1) d + 1)`` per layer, rolled with ``torch.cat`` each step.
    Conditioning: mel ``(B, n_mels, F)`` -> context conv -> upsampled to ``(B, n_mels, T)``;
    each step projects column ``t`` with every layer's own 1x1 ``n_mels -> G``.
    """

    def __init__(self, teacher: WaveNetTeacher):
        self.teacher = teacher
        stack = teacher.stack
        G = stack.gate_channels
        proj = teacher.conditioner.projection
        # the conditioner's one n_mels -> L G projection, split back into per-layer 1x1 convs
        self.cond_weights = (
            None if proj is None else [w for w in proj.weight[:, :, 0].split(G, dim=0)]
        )
        # every conv as a linear map on flattened (channel, tap) inputs, computed once
        self.conv_weights = [b.dilated.weight.flatten(1) for b in stack.blocks]  # (G, R k)
        self.out_weights = [b.output.weight[:, :, 0] for b in stack.blocks]  # (R + S, G/2)

    def _upsampled_mel(self, mel: Tensor | None) -> Tensor | None:
        cond = self.teacher.conditioner
        if mel is None or cond.projection is None:
            return None
        if cond.context is not None:
            mel = cond.context(mel)
        return cond.upsampler(mel)  # (B, n_mels, T)

    def generate(
        self,
        mel: Tensor | None,
        speaker: Tensor | None,
        num_samples: int,
        batch: int,
        generator: torch.Generator | None = None,
        forced: Tensor | None = None,
    ) -> Tensor:
        """Audio ``(B, T)``; with ``forced`` audio, the parameters ``(B, P, T)`` instead."""
        tch = self.teacher
        blocks = tch.stack.blocks
        G = tch.stack.gate_channels
        up = self._upsampled_mel(mel)
        glob = None
        if tch.conditioner.speaker_embedding is not None:
            glob = tch.conditioner(None, speaker).bias  # (B, L G, 1)
        queues = [torch.zeros(batch, b.dilated.in_channels, b.dilated.window) for b in blocks]
        audio = torch.zeros(batch, num_samples)
        collected = []
        x_prev = torch.zeros(batch, 1, 1)
        for t in range(num_samples):
            x = tch.input_conv(x_prev)[:, :, 0]  # (B, R)
            skips = 0
            for i, block in enumerate(blocks):
                queues[i] = torch.cat([queues[i][:, :, 1:], x.unsqueeze(-1)], dim=2)
                taps = queues[i][:, :, :: block.dilated.dilation[0]].reshape(batch, -1)
                pre = F.linear(taps, self.conv_weights[i], block.dilated.bias)  # (B, G)
                if up is not None:
                    pre = pre + F.linear(up[:, :, t], self.cond_weights[i])
                if glob is not None:
                    pre = pre + glob[:, i * G : (i + 1) * G, 0]
                a, b = pre.chunk(2, dim=1)
                out = F.linear(
                    torch.tanh(a) * torch.sigmoid(b), self.out_weights[i], block.output.bias
                )
                R = block.residual_channels
                skips = skips + out[:, R:]
                if R:
                    x = x + out[:, :R]
            params = tch.output(skips.unsqueeze(-1))  # (B, P, 1)
            if forced is not None:
                collected.append(params)
                sample = forced[:, t : t + 1]
            else:
                sample = tch.distribution.sample(params, generator)
                audio[:, t] = sample[:, 0]
            x_prev = tch.encode_input(sample)
        return torch.cat(collected, dim=2) if forced is not None else audio


# -- measurement -----------------------------------------------------------------------------


def build(size: str) -> tuple[Config, WaveNetTeacher]:
    path, overrides, _ = SIZES[size]
    cfg = load_config(path, overrides)
    torch.manual_seed(0)
    return cfg, WaveNetTeacher.from_config(cfg).eval()


def check_yardstick(teacher: WaveNetTeacher, cfg: Config) -> float:
    """Largest |straightforward - parallel| parameter difference on a short clip."""
    hop = cfg.audio.hop_length
    mel = torch.randn(1, cfg.audio.n_mels, 2)
    audio = torch.rand(1, 2 * hop) * 1.6 - 0.8
    with torch.inference_mode():
        parallel = teacher(audio, mel)
        steps = StraightforwardSampler(teacher).generate(mel, None, 2 * hop, 1, forced=audio)
    return float((steps - parallel).abs().max())


def variants(teacher: WaveNetTeacher) -> dict[str, Callable]:
    yardstick = StraightforwardSampler(teacher)

    def straightforward(mel, n, g):
        with torch.inference_mode():
            return yardstick.generate(mel, None, n, mel.shape[0], g)

    return {
        "straightforward": straightforward,
        "cached": lambda mel, n, g: generate(teacher, mel, num_samples=n, generator=g),
        "cached-bf16": lambda mel, n, g: generate(
            teacher, mel, num_samples=n, generator=g, precision="bfloat16"
        ),
    }


def measure(size: str, batches: list[int], repeats: int, steps_scale: float) -> list[dict]:
    cfg, teacher = build(size)
    error = check_yardstick(teacher, cfg)
    steps = max(1, int(SIZES[size][2] * steps_scale))
    hop = cfg.audio.hop_length
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(0)
        mel = torch.randn(batch, cfg.audio.n_mels, -(-steps // hop), generator=g)
        runs = variants(teacher)
        for fn in runs.values():  # warm-up on a few steps: allocator, weight layouts, kernels
            fn(mel, min(steps, 20), g)
        timings = time_round_robin(
            {name: partial(fn, mel, steps, g) for name, fn in runs.items()},
            torch.device("cpu"),
            repeats,
            warmup=0,
        )
        base = timings["straightforward"].median
        for name, timing in timings.items():
            med = timing.median
            rows.append(
                {
                    "size": size,
                    "batch": batch,
                    "method": name,
                    "steps": steps,
                    "samples_per_s": batch * steps / med,
                    "spread": timing.spread,
                    "ratio": base / med,
                    "yardstick_max_abs_error": error,
                    "parameters": teacher.num_parameters,
                    "receptive_field": teacher.receptive_field,
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"{'size':6s} {'batch':>5s} {'method':16s} {'samples/s':>10s} {'spread':>7s} "
        f"{'x straightforward':>18s}"
    )
    for r in rows:
        print(
            f"{r['size']:6s} {r['batch']:5d} {r['method']:16s} {r['samples_per_s']:10.1f} "
            f"{r['spread']:7.1%} {r['ratio']:18.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every size's number of timed steps"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        rows += measure(size, args.batches, args.repeats, args.steps_scale)
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "machine": platform.processor() or platform.machine(),
                    "results": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
