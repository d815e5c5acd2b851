"""Memory and per-sample cost against clip length, for the shipped models (or any checkpoint).

Two questions, each answered at several lengths in one run:

- student: the peak resident memory of synthesising a clip of ``L`` seconds from its log-mel,
  streamed chunk by chunk into a WAV file (``synthesize --chunk-seconds``, built on
  :meth:`Synthesizer.stream`), beside one-shot synthesis of the whole clip. Each measurement
  runs in a fresh process, so its peak RSS is its own; the baseline is that process's RSS
  with the model loaded, before synthesis. Streaming should stay flat in ``L``; one-shot holds
  the whole clip's noise, activations tiles and audio.
- teacher: the cached sampler's time per sample for clips of increasing length. Each step
  reads a fixed-size cache of the layers' past inputs, so the cost per step should not grow
  with the position in the clip.

The mel of every length is the bundled clip's, tiled. Prints a table and writes JSON.

Usage::

    python benchmarks/memory_length.py --threads 2 --json memory.json
    python benchmarks/memory_length.py --seconds 10 60 300 --teacher-seconds 0.25 1 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "data" / "alice" / "wavs" / "alice_021.flac"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mb() -> float:
    from wavedistill.bench.profiling import current_rss_mb

    return current_rss_mb()


def _tiled_mel(synth, seconds: float) -> torch.Tensor:
    """The bundled clip's normalised mel, tiled to ``seconds``: (n_mels, F)."""
    from wavedistill.bench.benchmark import tile
    from wavedistill.data.features import frames_for

    a = synth.cfg.audio
    mel = synth.features(CLIP)
    return tile(mel, frames_for(seconds, a))


def child(mode: str, checkpoint: str, seconds: float, threads: int) -> dict:
    """One measurement in this (fresh) process; the result as a dict."""
    from wavedistill.data.audio import write_wav, write_wav_stream
    from wavedistill.inference.synthesizer import Synthesizer

    torch.set_num_threads(threads)
    synth = Synthesizer.from_pretrained(checkpoint)
    mel = _tiled_mel(synth, seconds)
    hop, rate = synth.cfg.audio.hop_length, synth.cfg.audio.sample_rate
    base = _current_rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        if mode == "stream":
            frames = max(1, round(1.0 * rate / hop))  # 1 s chunks, as --chunk-seconds 1
            chunks = (mel[:, i : i + frames] for i in range(0, mel.shape[-1], frames))
            samples = write_wav_stream(out, synth.stream(chunks, seed=0), rate)
        elif mode == "one-shot":
            audio = synth.generate([mel], seed=0)[0]
            write_wav(out, audio, rate)
            samples = len(audio)
        else:  # teacher: cached sampling, time per sample
            samples = synth.generate([mel], seed=0)[0].shape[0]
    elapsed = time.perf_counter() - start
    return {
        "mode": mode,
        "seconds": seconds,
        "samples": samples,
        "elapsed_s": elapsed,
        "samples_per_s": samples / elapsed,
        "us_per_sample": 1e6 * elapsed / samples,
        "baseline_rss_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
        "growth_mb": _peak_rss_mb() - base,
    }


def measure(mode: str, checkpoint: str, seconds: float, threads: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--checkpoint",
            checkpoint,
            "--seconds",
            str(seconds),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        f"{'mode':<10}{'clip s':>8}{'samples/s':>12}{'us/sample':>11}{'base MB':>9}"
        f"{'peak MB':>9}{'growth MB':>11}"
    ]
    for r in rows:
        lines.append(
            f"{r['mode']:<10}{r['seconds']:>8g}{r['samples_per_s']:>12,.0f}"
            f"{r['us_per_sample']:>11.2f}{r['baseline_rss_mb']:>9.0f}"
            f"{r['peak_rss_mb']:>9.0f}{r['growth_mb']:>11.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", default="alice-student")
    p.add_argument("--teacher", default="alice-teacher")
    p.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 300])
    p.add_argument("--teacher-seconds", type=float, nargs="+", default=[0.25, 1, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.checkpoint, args.seconds[0], args.threads)))
        return
    rows = [
        measure(mode, args.student, s, args.threads)
        for s in args.seconds
        for mode in ("stream", "one-shot")
    ]
    rows += [measure("teacher", args.teacher, s, args.threads) for s in args.teacher_seconds]
    print(f"cpu: {_cpu_name()}, {args.threads} thread(s), torch {torch.__version__}")
    print(table(rows))
    teacher = [r["us_per_sample"] for r in rows if r["mode"] == "teacher"]
    if len(teacher) > 1:
        print(f"teacher us/sample, longest over shortest clip: {teacher[-1] / teacher[0]:.3f}")
    stream = [r["growth_mb"] for r in rows if r["mode"] == "stream"]
    print(
        f"streamed synthesis memory growth: {min(stream):.1f}-{max(stream):.1f} MB "
        f"over {args.seconds[0]:g}-{args.seconds[-1]:g} s clips"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "cpu": _cpu_name(),
                    "torch": torch.__version__,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )


def _cpu_name() -> str:
    from wavedistill.bench.benchmark import device_name

    return device_name(torch.device("cpu"))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
