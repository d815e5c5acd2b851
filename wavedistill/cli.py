"""The ``wavedistill`` command: a thin shell over the Python API.

Each subcommand parses its arguments and calls one API function; nothing here computes.
A :class:`UserError` becomes one line on stderr and exit status 2 (``--debug`` keeps the
traceback); heavy modules are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wavedistill import __version__
from wavedistill.errors import UserError

log = logging.getLogger("wavedistill")


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", type=Path, required=required,
                   help="YAML config (defaults if omitted)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, e.g. train.steps=1000 teacher.layers=12")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
                   help="folder written by `wavedistill preprocess`")
    p.add_argument("--out", type=Path, required=True, help="experiment folder (checkpoints, logs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --out")
    p.add_argument("--init-from", type=Path, help="take model weights (only) from this checkpoint")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N (default: cuda if available)")
    _config_args(p)


def _load_cfg(args):
    from wavedistill.config import load_config

    return load_config(args.config, args.overrides)


# -- subcommands -----------------------------------------------------------------------------


def cmd_preprocess(args) -> int:
    from wavedistill.preprocess import preprocess

    overrides = list(args.overrides) + ([f"data.format={args.format}"] if args.format else [])
    args.overrides = overrides
    report = preprocess(_load_cfg(args), args.data, args.out, strict=args.strict)
    return report.exit_code


def cmd_info(args) -> int:
    if args.path is None:
        from wavedistill.pretrained import describe_shipped

        print(describe_shipped())
        return 0
    from wavedistill.info import describe

    print(describe(args.path))
    return 0


def cmd_train_teacher(args) -> int:
    from wavedistill.training import train_teacher

    train_teacher(_load_cfg(args), args.data, args.out, resume=args.resume,
                  init_from=args.init_from, device=args.device)
    return 0


def cmd_distill(args) -> int:
    from wavedistill.training import train_student

    train_student(_load_cfg(args), args.teacher, args.data, args.out, resume=args.resume,
                  init_from=args.init_from, device=args.device)
    return 0


def cmd_synthesize(args) -> int:
    from wavedistill.synthesis import synthesize_cli

    return synthesize_cli(args)


def cmd_benchmark(args) -> int:
    from wavedistill.benchmark import benchmark_cli

    return benchmark_cli(args)


def cmd_evaluate(args) -> int:
    from wavedistill.evaluation import evaluate_cli

    return evaluate_cli(args)


def cmd_make_synthetic(args) -> int:
    from wavedistill.synthetic import make_synthetic_cli

    return make_synthetic_cli(args)


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavedistill",
        description="Train a WaveNet teacher, distil it into a parallel IAF student, synthesise, "
                    "benchmark and evaluate.")
    parser.add_argument("--version", action="version", version=f"wavedistill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("preprocess", help="compute log-mel features and statistics for a corpus")
    p.add_argument("--data", type=Path, required=True, help="corpus root (or a wav.scp file)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=["folder", "ljspeech", "vctk", "wavscp"],
                   help="corpus layout (default: data.format from the config)")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file is rejected")
    _config_args(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("info", help="summarise a preprocessed dataset, a checkpoint, or (with "
                       "no path) the shipped models")
    p.add_argument("path", type=Path, nargs="?",
                   help="dataset folder or checkpoint file (omit to list the shipped models)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train-teacher", help="train the WaveNet teacher by maximum likelihood")
    _train_args(p)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="distil a teacher into a parallel IAF student")
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint")
    _train_args(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("synthesize", help="generate audio with a teacher or student checkpoint")
    p.add_argument("--checkpoint", type=Path,
                   help="teacher or student checkpoint (default: the shipped student, "
                        "alice-student)")
    p.add_argument("--input", type=Path, nargs="+", help="clip(s) to copy-synthesise (audio) or "
                   "saved log-mel features (.npy, n_mels x frames)")
    p.add_argument("--seconds", type=float, help="length for unconditional models")
    p.add_argument("--speaker", type=int, help="speaker id for multi-speaker models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, required=True,
                   help="output wav, or a folder when several inputs are given")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="student only: synthesise long inputs in chunks of this length")
    p.add_argument("--no-ema", action="store_true", help="use raw weights instead of EMA weights")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("benchmark", help="samples/s of student and teacher, side by side")
    p.add_argument("--teacher", type=Path, help="teacher checkpoint")
    p.add_argument("--student", type=Path, help="student checkpoint")
    p.add_argument("--teacher-config", type=Path, help="teacher config (random weights)")
    p.add_argument("--student-config", type=Path, help="student config (random weights)")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--naive-steps", type=int, default=8,
                   help="steps of the naive teacher sampler, timed once the receptive field "
                        "has filled (it is slow by construction)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--training", action="store_true",
                   help="also measure training throughput (teacher step, distillation step)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--clip", type=Path, default=None,
                   help="speech whose log-mel conditions the models (default: a bundled "
                        "ARCTIC clip, present in a source checkout)")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("evaluate", help="held-out NLL and copy-synthesis quality, with figures")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="preprocessed dataset folder")
    p.add_argument("--teacher", type=Path, help="teacher checkpoint (for KL and teacher samples)")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--max-clips", type=int, default=8)
    p.add_argument("--teacher-seconds", type=float, default=0.5,
                   help="length of teacher samples (sequential sampling is slow)")
    p.add_argument("--split", choices=["valid", "all"], default="valid",
                   help="clips to score: the validation split, or every utterance of the "
                        "folder (a corpus the model never saw, e.g. another speaker)")
    p.add_argument("--griffin-lim-iters", type=int, default=32,
                   help="iterations of the Griffin-Lim baseline scored beside the models "
                        "(0 leaves it out)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("make-synthetic", help="write a synthetic source with exact entropy rate")
    p.add_argument("--kind", required=True, choices=["ar", "ar-conditioned", "ar-logistic"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"wavedistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wavedistill {args.command}: interrupted", file=sys.stderr)
        return 130
