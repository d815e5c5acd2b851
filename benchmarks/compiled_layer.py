"""Does ``torch.compile`` pay for one cached teacher step at batch 1 on a CPU?

A cached step is per-operation overhead, not arithmetic (see
wavedistill/models/fused_wavenet.py). This script times one residual layer of the small teacher
size (64 residual / 128 gate channels, kernel 3) at batch 1 -- taps product, gate, residual+skip
product -- written eagerly and compiled by ``torch.compile`` (Inductor), in one run, alternating
the two. On CPUs the compiled call's guards and dispatch cost more than the three or four
kernels they replace, which is why the shipped sampler stays eager (with ``out=`` buffers
instead).

Usage::

    python benchmarks/compiled_layer.py --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wavedistill.bench.profiling import time_round_robin


def make_layer(residual: int = 64, gate: int = 128, skip: int = 64, kernel: int = 3):
    """Eager layer function and its inputs: window ``(1, k R)`` -> ``(1, R + S)``."""
    g = torch.Generator().manual_seed(0)
    taps = torch.randn(kernel * residual, gate, generator=g) * 0.1
    out_w = torch.randn(gate // 2, residual + skip, generator=g) * 0.1
    out_b = torch.randn(residual + skip, generator=g) * 0.1
    window = torch.randn(1, kernel * residual, generator=g)
    cond = torch.randn(1, gate, generator=g)
    half = gate // 2

    def layer(window: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        pre = torch.addmm(cond, window, taps)
        gated = torch.tanh(pre[:, :half]) * torch.sigmoid(pre[:, half:])
        return torch.addmm(out_b, gated, out_w)

    return layer, (window, cond)


def repeated(fn, args, calls: int):
    """A function that calls ``fn(*args)`` ``calls`` times: one call is too short to time."""

    def run() -> None:
        for _ in range(calls):
            fn(*args)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layer, inputs = make_layer()
    variants = {"eager": layer, "compiled": torch.compile(layer, dynamic=False)}
    with torch.inference_mode():
        reference = layer(*inputs)
        for fn in variants.values():  # warm-up (compiles) and a correctness check
            torch.testing.assert_close(fn(*inputs), reference, rtol=1e-4, atol=1e-5)
            repeated(fn, inputs, 200)()
        timings = time_round_robin(
            {name: repeated(fn, inputs, args.calls) for name, fn in variants.items()},
            torch.device("cpu"),
            args.repeats,
            warmup=0,
        )
    rows = {
        name: {"us_per_call": t.median / args.calls * 1e6, "spread": t.spread}
        for name, t in timings.items()
    }
    eager = rows["eager"]["us_per_call"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), one residual layer at batch 1")
    print(f"{'variant':<10} {'us/call':>9} {'spread':>8} {'vs eager':>9}")
    for name, row in rows.items():
        print(
            f"{name:<10} {row['us_per_call']:>9.2f} {row['spread']:>8.1%} "
            f"{eager / row['us_per_call']:>8.2f}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"torch": torch.__version__, "threads": args.threads, "rows": rows}, indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
