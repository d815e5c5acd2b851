"""The ``wavedistill`` command: a thin shell over the Python API.

Each subcommand parses its arguments and calls one API function; nothing here computes.
A :class:`UserError` becomes one line on stderr and exit status 2 (``--debug`` keeps the
traceback); heavy modules are imported only by the subcommand that needs them. Faults of the
machine are one line too, each with its own status (``EXIT_STATUSES``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import shlex
import sys
from pathlib import Path

from wavedistill.config import DTYPE_NAMES, SAMPLER_DTYPE_NAMES
from wavedistill.errors import UserError
from wavedistill.faults import EXIT_OUT_OF_SPACE, EXIT_WRITE_FAILED, WriteFailed, advice
from wavedistill.training.interrupt import Interrupted
from wavedistill.version import __version__

EXIT_STATUSES = f"""exit status:
  0    done
  1    done, but some input was skipped or rejected (listed in the output folder)
  2    a user error: a missing or corrupt file, an invalid config key, a busy folder
  {EXIT_OUT_OF_SPACE}   out of disk space (what is intact and how to continue is said)
  {EXIT_WRITE_FAILED}   another I/O error while writing
  130  interrupted by SIGINT (Ctrl-C); training saved a checkpoint first
  143  stopped by SIGTERM; training saved a checkpoint first"""


log = logging.getLogger("wavedistill")


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="start from another toolkit's log-mel convention: hifigan or "
        "parallelwavegan (--config and overrides apply on top)",
    )
    p.add_argument(
        "--config", type=Path, required=required, help="YAML config (defaults if omitted)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="config overrides, e.g. train.steps=1000 teacher.layers=12",
    )


# Every option naming a model takes any reference store.loading.resolve_model reads; kept as
# typed (no Path) so that a Hub id such as "./owner/name" is not normalised.
MODEL_REFERENCE = (
    "a checkpoint file, a bundle folder, a shipped model's name (alice-student, "
    "alice-teacher) or a Hub id (owner/name)"
)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", type=Path, required=True, help="folder written by `wavedistill preprocess`"
    )
    p.add_argument("--out", type=Path, required=True, help="experiment folder (checkpoints, logs)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    p.add_argument(
        "--init-from", help=f"take model weights (only) from this model: {MODEL_REFERENCE}"
    )
    p.add_argument(
        "--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)"
    )
    _config_args(p)


def _load_cfg(args):
    from wavedistill.config import load_config

    return load_config(args.config, args.overrides, preset=getattr(args, "preset", None))


# -- subcommands -----------------------------------------------------------------------------


def cmd_preprocess(args) -> int:
    from wavedistill.data.preprocess import preprocess

    overrides = list(args.overrides) + ([f"data.format={args.format}"] if args.format else [])
    args.overrides = overrides
    report = preprocess(
        _load_cfg(args),
        args.data,
        args.out,
        strict=args.strict,
        mel_dir=args.mel_dir,
        mel_layout=args.mel_layout,
    )
    return report.exit_code


def cmd_info(args) -> int:
    if args.path is None and not args.check:
        from wavedistill.info import describe_shipped

        print(describe_shipped())
        return 0
    if args.check:
        from wavedistill.info import check_dataset

        if args.path is None:
            raise UserError("--check needs a dataset folder: wavedistill info DATA --check")
        text, bad = check_dataset(args.path)
        print(text)
        return 1 if bad else 0
    from wavedistill.info import describe

    print(describe(args.path))
    return 0


def cmd_train_teacher(args) -> int:
    from wavedistill.training.runs import train_teacher

    train_teacher(
        _load_cfg(args),
        args.data,
        args.out,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
    )
    return 0


def cmd_distill(args) -> int:
    from wavedistill.training.runs import train_student

    train_student(
        _load_cfg(args),
        args.teacher,
        args.data,
        args.out,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
    )
    return 0


def cmd_synthesize(args) -> int:
    from wavedistill.data.external_mel import MelConvention, read_stats
    from wavedistill.inference.decode import decode_corpus, open_synthesizer, synthesize_files

    sources = [bool(args.input), args.input_dir is not None, args.scp is not None]
    if sum(sources) > 1:
        raise UserError("give one of --input, --input-dir and --scp")
    stats = read_stats(args.stats) if args.stats is not None else None
    convention = MelConvention(args.mel_layout, stats, args.no_normalize)
    synth = open_synthesizer(
        args.checkpoint,
        args.device,
        use_ema=not args.no_ema,
        dtype=args.dtype,
        temperature=args.temperature,
    )
    if args.input_dir is not None or args.scp is not None:
        if args.seconds is not None or args.chunk_seconds is not None:
            raise UserError("--seconds and --chunk-seconds are not for --input-dir/--scp")
        batch = 1 if args.batch_size is None else args.batch_size
        report = decode_corpus(
            synth,
            args.output,
            args.input_dir,
            args.scp,
            batch_size=batch,
            speaker=args.speaker,
            seed=args.seed,
            convention=convention,
        )
        for name, reason in report.skipped:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        print(report.summary())
        return 1 if report.skipped else 0
    if args.batch_size is not None:
        raise UserError("--batch-size is for --input-dir and --scp (--input files are one batch)")
    report = synthesize_files(
        synth,
        args.output,
        args.input,
        seconds=args.seconds,
        speaker=args.speaker,
        seed=args.seed,
        chunk_seconds=args.chunk_seconds,
        convention=convention,
    )
    for path, seconds in report.written:
        print(f"wrote {path} ({seconds:.2f} s)")
    return 0


def cmd_export(args) -> int:
    from wavedistill.faults import explain
    from wavedistill.store.export import (
        check_deployable,
        export_bundle,
        export_onnx,
        export_torchscript,
    )
    from wavedistill.store.loading import load_model

    loaded = load_model(args.checkpoint)
    if args.onnx or args.torchscript:
        check_deployable(loaded)  # before the bundle is written
    with explain(
        lambda exc: (
            f"{args.out} is not a complete bundle until bundle.json is "
            "written; " + advice(exc, "run the same command again")
        )
    ):
        out = export_bundle(loaded, args.out, trained_on=args.trained_on)
    print(f"wrote the {loaded.kind} bundle {out}")
    with explain(
        lambda exc: (
            f"the bundle {out} itself is complete; " + advice(exc, "run the same command again")
        )
    ):
        if args.torchscript:
            print(f"wrote {export_torchscript(loaded, out / 'student.torchscript.pt')}")
        if args.onnx:
            print(f"wrote {export_onnx(loaded, out / 'student.onnx')}")
    return 0


def cmd_benchmark(args) -> int:
    from wavedistill.bench.benchmark import Settings, benchmark, format_table, report_json
    from wavedistill.fileio import atomic_write_text

    settings = Settings.checked(
        args.seconds,
        args.naive_steps,
        args.batch,
        args.repeats,
        device=args.device,
        dtype=args.dtype,
        clip=args.clip,
    )
    report = benchmark(
        settings,
        teacher=args.teacher,
        student=args.student,
        teacher_config=args.teacher_config,
        student_config=args.student_config,
        threads=args.threads,
        training=args.training,
    )
    print(format_table(report))
    if args.json is not None:
        atomic_write_text(args.json, report_json(report))
    return 0


def cmd_evaluate(args) -> int:
    from wavedistill.evaluation.report import verdict
    from wavedistill.evaluation.run import evaluate

    results = evaluate(
        args.checkpoint,
        args.data,
        args.out,
        teacher=args.teacher,
        max_clips=args.max_clips,
        teacher_seconds=args.teacher_seconds,
        device=args.device,
        griffin_lim_iters=args.griffin_lim_iters,
        split=args.split,
        command=_command(args),
        temperature=args.temperature,
    )
    summary = f"report written to {args.out}"
    if "nll" in results:
        summary += f" (held-out NLL {results['nll']['bits_per_sample']:.4f} bits/sample)"
    print(summary)
    sentence = verdict(results["copy_synthesis"])
    if sentence:
        print(sentence)
    print(f"listening page: {args.out / 'index.html'}")
    if results.get("skipped"):  # last: clips left out as corrupted, and where they are listed
        print(results["skipped"])
    return 0


def cmd_compare(args) -> int:
    from wavedistill.evaluation.compare import compare

    page = compare(args.reports, args.out, labels=args.label, command=_command(args))
    print(f"comparison page: {page}")
    return 0


def _command(args) -> str:
    """The command line that is running, as one copyable shell line."""
    import shlex

    return shlex.join(["wavedistill", *getattr(args, "argv", [])])


def cmd_make_synthetic(args) -> int:
    from wavedistill.data.synthetic_sources import make_synthetic

    summary = make_synthetic(args.kind, args.out, args.seconds, args.clips, args.seed)
    print(
        f"{args.out}: {args.clips} clips of {args.kind}; entropy rate "
        f"{summary['entropy_rate_bits']:.4f} bits/sample on the 16-bit grid "
        f"({summary['entropy_rate_16bit_nats']:.4f} nats); clip rate {summary['clip_rate']:.2g}"
    )
    return 0


def cmd_ship(args) -> int:
    from wavedistill.store.registry import ship

    for path in ship(args.teacher, args.student, args.out_dir):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_known_density(args) -> int:
    from wavedistill.evaluation.known_density import known_density_report

    table, out = known_density_report(args.exp, args.segments, args.seconds, args.device)
    print(table)
    print(f"written: {out}")
    return 0


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavedistill",
        description="Train a WaveNet teacher, distil it into a parallel IAF student, synthesise, "
        "benchmark and evaluate.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wavedistill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("preprocess", help="compute log-mel features and statistics for a corpus")
    p.add_argument("--data", type=Path, required=True, help="corpus root (or a wav.scp file)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--format",
        choices=["folder", "ljspeech", "vctk", "wavscp"],
        help="corpus layout (default: data.format from the config)",
    )
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file is rejected")
    p.add_argument(
        "--mel-dir",
        type=Path,
        help="store the mels of this folder (<utterance id>.npy, e.g. an acoustic "
        "model's predictions) instead of computing them, for fine-tuning",
    )
    p.add_argument(
        "--mel-layout",
        default="auto",
        choices=["auto", "n_mels,frames", "frames,n_mels", "1,n_mels,frames"],
        help="layout of the --mel-dir arrays",
    )
    _config_args(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser(
        "info",
        help="summarise a preprocessed dataset, a model, or (with no path) the shipped models",
    )
    p.add_argument(
        "path",
        nargs="?",
        help=f"a dataset folder, or {MODEL_REFERENCE} (omit to list the shipped models)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="verify every stored array and manifest entry of a dataset folder and "
        "list the bad ones (exit status 1 when there are any)",
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train-teacher", help="train the WaveNet teacher by maximum likelihood")
    _train_args(p)
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("distill", help="distil a teacher into a parallel IAF student")
    p.add_argument("--teacher", required=True, help=f"the teacher: {MODEL_REFERENCE}")
    _train_args(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("synthesize", help="generate audio with a teacher or student checkpoint")
    p.add_argument(
        "--checkpoint",
        help=f"the teacher or student: {MODEL_REFERENCE} (default: the shipped "
        "student, alice-student)",
    )
    p.add_argument(
        "--input",
        type=Path,
        nargs="+",
        help="clip(s) to copy-synthesise (audio) or "
        "saved log-mel features (.npy), all as one batch",
    )
    p.add_argument(
        "--input-dir", type=Path, help="a folder of .wav/.flac/.npy inputs, one output file each"
    )
    p.add_argument("--scp", type=Path, help="a Kaldi feats.scp of log-mel features (kaldiio)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="utterances per batch for --input-dir/--scp, length-sorted (default 1)",
    )
    p.add_argument(
        "--mel-layout",
        default="auto",
        choices=["auto", "n_mels,frames", "frames,n_mels", "1,n_mels,frames"],
        help="layout of saved features (auto refuses ambiguous shapes)",
    )
    p.add_argument(
        "--stats",
        type=Path,
        help="statistics that normalised the saved features (stats.npz, or "
        "ParallelWaveGAN's stats.npy): undone before the model's own",
    )
    p.add_argument(
        "--no-normalize",
        action="store_true",
        help="saved features are already normalised with the model's statistics",
    )
    p.add_argument("--seconds", type=float, help="length for unconditional models")
    p.add_argument("--speaker", type=int, help="speaker id for multi-speaker models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scale of a student's noise: 1 samples its distribution, 0 is its deterministic "
        "path, values between trade variety for smoothness",
    )
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="output wav, or a folder when several inputs are given",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--chunk-seconds",
        type=float,
        default=None,
        help="student only: synthesise long inputs in chunks of this length",
    )
    p.add_argument("--no-ema", action="store_true", help="use raw weights instead of EMA weights")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPE_NAMES,
        help="precision of synthesis; reduced ones only where the device computes them natively",
    )
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser(
        "export",
        help="write an inference bundle (safetensors, no pickle), "
        "optionally ONNX and TorchScript files of the student",
    )
    p.add_argument("--checkpoint", required=True, help=f"the model: {MODEL_REFERENCE}")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--onnx", action="store_true", help="also write student.onnx (onnx extra)")
    p.add_argument("--torchscript", action="store_true", help="also write student.torchscript.pt")
    p.add_argument("--trained-on", help="what the model was trained on, for the model card")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("benchmark", help="samples/s of student and teacher, side by side")
    p.add_argument("--teacher", help=f"the teacher: {MODEL_REFERENCE}")
    p.add_argument("--student", help=f"the student: {MODEL_REFERENCE}")
    p.add_argument("--teacher-config", type=Path, help="teacher config (random weights)")
    p.add_argument("--student-config", type=Path, help="student config (random weights)")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument(
        "--naive-steps",
        type=int,
        default=8,
        help="steps of the naive teacher sampler, timed once the receptive field "
        "has filled (it is slow by construction)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=SAMPLER_DTYPE_NAMES, default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--training",
        action="store_true",
        help="also measure training throughput (teacher step, distillation step)",
    )
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="speech whose log-mel conditions the models (default: a bundled "
        "ARCTIC clip, present in a source checkout)",
    )
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("evaluate", help="held-out NLL and copy-synthesis quality, with figures")
    p.add_argument("--checkpoint", required=True, help=f"the model: {MODEL_REFERENCE}")
    p.add_argument("--data", type=Path, required=True, help="preprocessed dataset folder")
    p.add_argument("--teacher", help=f"the teacher, for KL and teacher samples: {MODEL_REFERENCE}")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--max-clips", type=int, default=8)
    p.add_argument(
        "--teacher-seconds",
        type=float,
        default=0.5,
        help="length of teacher samples (sequential sampling is slow)",
    )
    p.add_argument(
        "--split",
        choices=["valid", "all"],
        default="valid",
        help="clips to score: the validation split, or every utterance of the "
        "folder (a corpus the model never saw, e.g. another speaker)",
    )
    p.add_argument(
        "--griffin-lim-iters",
        type=int,
        default=32,
        help="iterations of the Griffin-Lim baseline scored beside the models (0 leaves it out)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scale of the student's noise in its copy-synthesis (0: its deterministic path)",
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="one listening page setting two or more evaluation "
        "reports side by side, per clip, with the metric deltas",
    )
    p.add_argument(
        "reports",
        type=Path,
        nargs="+",
        metavar="REPORT_DIR",
        help="folders written by `wavedistill evaluate --out` (the first is the "
        "reference of the deltas)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder of the comparison page")
    p.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="name of each report on the page, in order (default: folder names)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("make-synthetic", help="write a synthetic source with exact entropy rate")
    p.add_argument("--kind", required=True, choices=["ar", "ar-conditioned", "ar-logistic"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_synthetic)

    p = sub.add_parser(
        "known-density",
        help="score the synthetic recipe's models against their "
        "sources' exact densities (nats/sample)",
    )
    p.add_argument(
        "--exp",
        type=Path,
        default=Path("exp/synthetic"),
        help="the synthetic recipe's experiment folder",
    )
    p.add_argument("--segments", type=int, default=32, help="student samples drawn")
    p.add_argument("--seconds", type=float, default=1.0, help="length of each")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_known_density)

    p = sub.add_parser(
        "ship",
        help="install a recipe's teacher and student as the shipped models (inference copies)",
    )
    p.add_argument("--teacher", required=True, type=Path)
    p.add_argument("--student", required=True, type=Path)
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where to write them (default: the package's own weights folder)",
    )
    p.set_defaults(func=cmd_ship)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"wavedistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except WriteFailed as exc:
        if args.debug:
            raise
        if not exc.notes:  # files written whole before it stay; nothing half-written does
            exc.add(advice(exc, "run the same command again"))
        print(f"wavedistill {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print(
            f"wavedistill {args.command}: {exc}; resume with: {resume_command(argv)}",
            file=sys.stderr,
        )
        return exc.exit_code
    except KeyboardInterrupt as exc:  # a second signal, or one outside training
        print(f"wavedistill {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except OSError as exc:  # a full disk outside the writers that say which file
        if args.debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"wavedistill {args.command}: error: no space left on device "
            f"({exc.filename or 'writing'}); free space and run again",
            file=sys.stderr,
        )
        return EXIT_OUT_OF_SPACE


def resume_command(argv: list[str] | None) -> str:
    """The command line that continues an interrupted training run: this one with
    ``--resume``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--init-from" in args:  # the checkpoint now holds those weights and more
        at = args.index("--init-from")
        del args[at : at + 2]
    args = [a for a in args if not a.startswith("--init-from=")]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["wavedistill", *args])
