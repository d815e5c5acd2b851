"""Teacher training throughput: forward + backward + Adam step, samples per second.

Compares, side by side in one run and on the same batch:

- ``straightforward``: a textbook WaveNet (kept here only as the yardstick): mel upsampled to
  sample rate by transposed convolutions, a 1x1 conditioning conv per layer on the upsampled mel,
  the dilated conv padded then cropped, separate residual and skip 1x1 convs;
- ``wavedistill``: :class:`wavedistill.models.teacher.WaveNetTeacher` (conditioning projected at
  frame rate and upsampled by a channel-shared filter, one fused residual+skip 1x1), in float32 and
  under bfloat16 autocast.

Both use the same output head and loss (the config's discretized mixture of logistics), the same
layer sizes and the same Adam optimiser. Each variant runs ``--warmup`` untimed steps; then the
variants take turns for ``--repeats`` rounds (one timed step each per round, so that machine noise
hits them alike); the table gives the median and the spread ((max - min) / median).

With ``--distill``: one distillation step instead (the student's forward and backward, the
frozen teacher scoring the student's sample, the KL terms with ``distill.num_draws`` Monte-Carlo
draws or the Gaussian closed form, the power loss; no optimiser step), at ClariNet's sizes
(``clarinet``: Gaussian teacher of 2 x 10 layers, 128/256/128 channels, kernel 2;
``clarinet-mol``: the same with a 10-logistic head and 100 draws) and at the LJSpeech recipe's
(``ljspeech``), all with the recipe's 10/10/10/30 x 64 student. Variants, on the same batch and
seed:

- ``textbook``: the same modules with the gate computed by plain autograd of
  ``tanh(a) * sigmoid(b)`` after adding the materialised upsampled conditioning, and the
  mixture's log-density of the draws by plain autograd of its formula (kept here only as the
  yardstick, as in ``tests/test_distillation_speed.py``);
- ``wavedistill``: the library as it is.

It also splits one ``wavedistill`` step into its parts (forward and backward of the student,
the teacher, and the KL terms and power loss), timed by hooks, the median of the repeats.

Usage::

    python benchmarks/train_speed.py                       # small and LJSpeech sizes
    python benchmarks/train_speed.py --sizes small --threads 2 --json out.json
    python benchmarks/train_speed.py --distill --sizes clarinet clarinet-mol --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavedistill.bench.profiling import time_round_robin
from wavedistill.config import Config, load_config
from wavedistill.models import networks
from wavedistill.models.distributions import build_distribution, logistic_mixture
from wavedistill.models.distributions.logistic_mixture import split_params
from wavedistill.models.networks import count_parameters, dilation_cycle
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.distillation import Distillation

# The small teacher's one definition, shared with sampling_speed.py and `wavedistill benchmark`.
SMALL_TEACHER = Path(__file__).resolve().parent / "configs" / "teacher_small.yaml"
PAPER_TEACHER = Path(__file__).resolve().parent / "configs" / "teacher_paper.yaml"

# name -> (config file or None, config overrides, batch size); the segment is
# data.segment_length
SIZES: dict[str, tuple[Path | None, list[str], int]] = {
    "small": (SMALL_TEACHER, [], 4),
    "ljspeech": (PAPER_TEACHER, [], 1),
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
            nn.ConvTranspose2d(1, 1, (1, f), stride=(1, f)) for f in t.upsample_factors
        )
        self.input_conv = nn.Conv1d(1, R, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(R, G, k, dilation=d, padding=(k - 1) * d) for d in self.dilations
        )
        self.cond = nn.ModuleList(nn.Conv1d(n_mels, G, 1, bias=False) for _ in self.dilations)
        self.res = nn.ModuleList(nn.Conv1d(G // 2, R, 1) for _ in self.dilations)
        self.skip = nn.ModuleList(nn.Conv1d(G // 2, S, 1) for _ in self.dilations)
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(S, S, 1), nn.ReLU(), nn.Conv1d(S, num_params, 1)
        )

    def forward(self, audio: Tensor, mel: Tensor) -> Tensor:
        T = audio.shape[-1]
        c = mel.unsqueeze(1)  # (B, 1, n_mels, F)
        for up in self.upsample:
            c = up(c)
        c = c.squeeze(1)  # (B, n_mels, T)
        x = self.input_conv(F.pad(audio[:, None, :-1], (1, 0)))
        skips = 0
        for conv, cond, res, skip in zip(self.dilated, self.cond, self.res, self.skip, strict=True):
            h = conv(x)[..., :T] + cond(c)
            a, b = h.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(b)
            skips = skips + skip(z)
            x = (x + res(z)) * math.sqrt(0.5)
        return self.head(skips)


# -- measuring -------------------------------------------------------------------------------


def train_step_fn(
    model: nn.Module,
    forward: Callable[[], Tensor],
    loss_of: Callable[[Tensor], Tensor],
    autocast: bool,
) -> Callable[[], None]:
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


def build_variant(variant: str, cfg: Config, num_params: int) -> nn.Module:
    torch.manual_seed(0)
    if variant == "straightforward":
        return StraightforwardWaveNet(cfg, num_params)
    return WaveNetTeacher.from_config(cfg)


def measure_size(name: str, variants: list[str], warmup: int, repeats: int) -> list[dict]:
    path, overrides, batch = SIZES[name]
    cfg = load_config(path, overrides)
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
        steps[variant] = train_step_fn(
            model, lambda m=model: m(audio, mel), loss_of, autocast=variant.endswith("bf16")
        )
    # variants take turns, one step each per round, so a noisy machine slows them alike
    timings = time_round_robin(steps, torch.device("cpu"), repeats, warmup)
    rows = []
    for variant in variants:
        timing = timings[variant]
        rows.append(
            {
                "size": name,
                "variant": variant,
                "batch": batch,
                "segment": segment,
                "parameters": count_parameters(models[variant]),
                "step_s": timing.median,
                "spread": timing.spread,
                "samples_per_s": batch * segment / timing.median,
                "times": timing.times,
            }
        )
    base = next((r for r in rows if r["variant"] == "straightforward"), None)
    for r in rows:
        r["speedup"] = base["step_s"] / r["step_s"] if base else None
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'size':<9} {'variant':<17} {'batch x T':>11} {'params':>10} {'step s':>8} "
        f"{'spread':>7} {'samples/s':>10} {'vs straight':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(
            f"{r['size']:<9} {r['variant']:<17} {r['batch']:>4} x {r['segment']:<5}"
            f"{r['parameters']:>10,} {r['step_s']:>8.3f} {r['spread']:>6.0%} "
            f"{r['samples_per_s']:>10,.0f} {speed:>11}"
        )


# -- the distillation step -------------------------------------------------------------------

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "ljspeech" / "conf"
_CLARINET = [
    "teacher.layers=20",
    "teacher.stacks=2",
    "teacher.kernel_size=2",
    "teacher.residual_channels=128",
    "teacher.gate_channels=256",
    "teacher.skip_channels=128",
]
# name -> (teacher overrides, student overrides) of the LJSpeech recipe's configs; batch 1
DISTILL_SIZES: dict[str, tuple[list[str], list[str]]] = {
    "clarinet": (_CLARINET + ["teacher.output=gaussian"], ["student.noise=gaussian"]),
    "clarinet-mol": (_CLARINET + ["teacher.num_mixtures=10"], ["distill.num_draws=100"]),
    "ljspeech": ([], []),
}


def textbook_gate(pre: Tensor, cond=None) -> Tensor:
    """``tanh(a) * sigmoid(b)`` of ``pre`` plus the materialised upsampled conditioning."""
    if cond is not None and cond.frames is not None:
        pre = pre + (cond.frames.unsqueeze(-1) * cond.filter).flatten(-2)
    if cond is not None and cond.bias is not None:
        pre = pre + cond.bias
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def textbook_mol_log_density(params: Tensor, x: Tensor, log_scale_min: float) -> Tensor:
    """Mixture log-density of ``x (B, [N,] T)`` by autograd of the formula."""
    logits, means, log_scales = split_params(params, log_scale_min)
    log_w = F.log_softmax(logits, dim=1)
    if x.dim() == 3:
        log_w, means, log_scales = (v.unsqueeze(1) for v in (log_w, means, log_scales))
    z = (x.unsqueeze(-2) - means) * torch.exp(-log_scales)
    return torch.logsumexp(log_w + F.logsigmoid(z) + F.logsigmoid(-z) - log_scales, dim=-2)


@contextlib.contextmanager
def textbook() -> Iterator[None]:
    """The library's gate and mixture density swapped for the textbook formulas."""
    saved = networks.gated_activation, logistic_mixture.mol_log_density
    networks.gated_activation = textbook_gate
    logistic_mixture.mol_log_density = textbook_mol_log_density
    try:
        yield
    finally:
        networks.gated_activation, logistic_mixture.mol_log_density = saved


def distill_step_fn(
    student: nn.Module, objective: Distillation, batch: dict[str, Tensor], variant: str
) -> Callable[[], float]:
    """One closure = the distillation loss (fixed seed) and its backward; returns the loss."""

    def step() -> float:
        student.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with textbook() if variant == "textbook" else contextlib.nullcontext():
            loss, _ = objective.loss(student, batch)
            loss.backward()
        return float(loss)

    return step


def step_parts(
    student: nn.Module, objective: Distillation, batch: dict[str, Tensor]
) -> dict[str, float]:
    """Seconds of each part of one step, from timestamps taken by hooks: the teacher's forward
    (pre-)hooks, a gradient hook on its output (the KL terms' backward is done) and one on its
    input (the teacher's backward is done)."""
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks.setdefault(name, time.perf_counter())

    def before_teacher(module, args):
        mark("student_forward")
        x = args[0]
        x.register_hook(lambda g: mark("teacher_backward"))

    def after_teacher(module, args, out):
        mark("teacher_forward")
        out.register_hook(lambda g: mark("kl_power_backward"))

    teacher = objective.teacher
    hooks = [
        teacher.register_forward_pre_hook(before_teacher),
        teacher.register_forward_hook(after_teacher),
    ]
    try:
        student.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        start = time.perf_counter()
        loss, _ = objective.loss(student, batch)
        mark("kl_power_forward")
        loss.backward()
        mark("student_backward")
    finally:
        for h in hooks:
            h.remove()
    parts, last = {}, start
    for name in (
        "student_forward",
        "teacher_forward",
        "kl_power_forward",
        "kl_power_backward",
        "teacher_backward",
        "student_backward",
    ):
        parts[name], last = marks[name] - last, marks[name]
    return parts


def measure_distill_size(name: str, variants: list[str], warmup: int, repeats: int) -> list[dict]:
    teacher_overrides, student_overrides = DISTILL_SIZES[name]
    tcfg = load_config(RECIPE / "teacher.yaml", teacher_overrides)
    scfg = load_config(RECIPE / "student.yaml", student_overrides)
    torch.manual_seed(0)
    teacher, student = WaveNetTeacher.from_config(tcfg), IAFStudent.from_config(scfg)
    objective = Distillation(teacher, scfg)
    segment, hop = scfg.data.segment_length, scfg.audio.hop_length
    g = torch.Generator().manual_seed(0)
    batch = {
        "audio": (0.3 * torch.randn(1, segment, generator=g)).clamp(-1.0, 1.0),
        "mel": torch.randn(1, scfg.audio.n_mels, segment // hop, generator=g),
    }
    steps = {v: distill_step_fn(student, objective, batch, v) for v in variants}
    losses = {v: step() for v, step in steps.items()}
    timings = time_round_robin(steps, torch.device("cpu"), repeats, warmup)
    parts = [step_parts(student, objective, batch) for _ in range(repeats)]
    rows = []
    for variant in variants:
        timing = timings[variant]
        rows.append(
            {
                "size": name,
                "variant": variant,
                "batch": 1,
                "segment": segment,
                "num_draws": 0 if objective.closed_form else scfg.distill.num_draws,
                "loss": losses[variant],
                "step_s": timing.median,
                "spread": timing.spread,
                "samples_per_s": segment / timing.median,
                "times": timing.times,
                "parts_s": (
                    {k: statistics.median(p[k] for p in parts) for k in parts[0]}
                    if variant == "wavedistill"
                    else None
                ),
            }
        )
    base = next((r for r in rows if r["variant"] == "textbook"), None)
    for r in rows:
        r["speedup"] = base["step_s"] / r["step_s"] if base else None
    return rows


def print_distill_table(rows: list[dict]) -> None:
    head = (
        f"{'size':<13} {'variant':<12} {'draws':>5} {'loss':>12} {'step s':>8} "
        f"{'spread':>7} {'samples/s':>10} {'vs textbook':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(
            f"{r['size']:<13} {r['variant']:<12} {r['num_draws']:>5} {r['loss']:>12.6f} "
            f"{r['step_s']:>8.3f} {r['spread']:>6.0%} {r['samples_per_s']:>10,.0f} "
            f"{speed:>11}"
        )
    for r in rows:
        if r["parts_s"]:
            total = sum(r["parts_s"].values())
            shares = ", ".join(f"{k} {v / total:.0%}" for k, v in r["parts_s"].items())
            print(f"{r['size']} step parts ({total:.3f} s): {shares}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--distill",
        action="store_true",
        help="measure the distillation step (sizes: "
        + ", ".join(DISTILL_SIZES)
        + "; variants: textbook, wavedistill)",
    )
    p.add_argument("--sizes", nargs="+", choices=[*SIZES, *DISTILL_SIZES], default=None)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["straightforward", "wavedistill", "wavedistill-bf16"],
        choices=["straightforward", "wavedistill", "wavedistill-bf16"],
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = DISTILL_SIZES if args.distill else SIZES
    args.sizes = args.sizes or list(table)
    if any(name not in table for name in args.sizes):
        p.error(f"--sizes takes {', '.join(table)}" + (" with --distill" if args.distill else ""))
    if args.distill:
        rows = []
        for name in args.sizes:
            rows += measure_distill_size(
                name, ["textbook", "wavedistill"], args.warmup, args.repeats
            )
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}"
        )
        print_distill_table(rows)
        if args.json:
            info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
            args.json.write_text(json.dumps(info, indent=2))
        return 0
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
