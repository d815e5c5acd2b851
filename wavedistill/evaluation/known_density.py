"""Trained models measured against sources of known density (the synthetic recipe).

A teacher's gap is its held-out NLL minus the exact entropy rate of the 16-bit file; in
expectation it is KL(source || teacher) per sample. A student's gap is KL(student || source)
per sample, estimated on the student's own samples from its exact log-density (known from
the noise that made each sample) minus the source's exact conditional log-density. Both are
per-sample means with standard errors over independent pieces (blocks of a clip for the
teacher, independently drawn segments for the student).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from wavedistill.data.audio import dequantize_16bit
from wavedistill.data.corpora import read_jsonl
from wavedistill.data.features import frames_for
from wavedistill.data.synthetic_sources import (
    LOG_BIN_WIDTH,
    conditional_log_densities,
    load_sources,
)
from wavedistill.errors import UserError
from wavedistill.fileio import atomic_write_text
from wavedistill.store.checkpoint import ModelKind
from wavedistill.store.loading import load_model

TEACHER_TARGET = 0.01  # nats/sample: teacher NLL minus the entropy rate
STUDENT_TARGET = 0.02  # nats/sample: KL(student || source)
GAP_BLOCK = 4000  # samples per block of the teacher's blocked standard error


def _load(checkpoint: str | Path, kind: ModelKind, device: str):
    """``(model, Config, FeatureStats, device)`` of a checkpoint, frozen on ``device``."""
    loaded = load_model(checkpoint, kind, device)
    return loaded.model, loaded.cfg, loaded.stats, loaded.device


def _entries(data_dir: Path) -> list[dict]:
    """Every clip of a synthetic folder (both manifests: a folder drawn with another seed
    than the training folder is held out as a whole)."""
    return [
        e
        for split in ("train", "valid")
        if (data_dir / f"{split}.jsonl").is_file()
        for e in read_jsonl(data_dir / f"{split}.jsonl")
    ]


def _mean_and_stderr(pieces: np.ndarray) -> tuple[float, float]:
    """Mean of equally weighted independent pieces (n,) and its standard error."""
    n = len(pieces)
    return float(pieces.mean()), float(pieces.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def teacher_gap(
    checkpoint: str | Path, data_dir: str | Path, device: str = "cpu", block: int = GAP_BLOCK
) -> dict:
    """Held-out NLL of a teacher minus the exact entropy rate, in nats per sample.

    Every clip of ``data_dir`` (a folder written by :func:`make_synthetic`, best with another
    seed than the training data) is scored in one teacher pass; the first
    ``max(receptive field, p)`` samples of each clip are left out, where the teacher sees
    zeros instead of the past. Per sample the gap is ``-log p_T(x_t | x_<t) - H_t`` with
    ``H_t`` the exact conditional entropy of the 16-bit sample; its standard error comes from
    blocks of ``block`` samples. ``paired_kl`` scores the same samples under the source
    (``log p(x_t | x_<t) - log p_T(x_t | x_<t)``), an estimate of KL(source || teacher) with a
    far smaller error. Returns a dict of these (and ``samples``)."""
    data_dir = Path(data_dir)
    teacher, cfg, stats, dev = _load(checkpoint, "teacher", device)
    sources = load_sources(data_dir)
    gaps, pairs = [], []
    for entry in _entries(data_dir):
        source = sources[entry["id"]]
        pcm = np.load(data_dir / entry["audio"])
        audio = torch.from_numpy(dequantize_16bit(pcm))[None].to(dev)
        mel = stats.normalize(torch.from_numpy(np.load(data_dir / entry["mel"])))[None].to(dev)
        with torch.inference_mode():
            log_p = teacher.log_prob(audio, mel if cfg.teacher.use_mel else None)
        log_p = log_p[0].double().cpu().numpy()
        skip = max(teacher.receptive_field, source.order)
        scale = source.per_sample(len(pcm))[1]
        entropy = source.conditional_entropy(scale) - LOG_BIN_WIDTH
        truth = conditional_log_densities(dequantize_16bit(pcm), source) + LOG_BIN_WIDTH
        keep = (len(pcm) - skip) // block * block  # whole blocks only
        gaps.append((-log_p - entropy)[skip : skip + keep].reshape(-1, block).mean(1))
        paired = truth[skip - source.order :] - log_p[skip:]
        pairs.append(paired[:keep].reshape(-1, block).mean(1))
    gap, gap_se = _mean_and_stderr(np.concatenate(gaps))
    kl, kl_se = _mean_and_stderr(np.concatenate(pairs))
    return {
        "gap": gap,
        "stderr": gap_se,
        "paired_kl": kl,
        "paired_stderr": kl_se,
        "samples": int(sum(len(g) for g in gaps) * block),
        "target": TEACHER_TARGET,
        "measure": "teacher NLL − entropy rate",
        "head": cfg.teacher.output,
    }


def student_kl(
    checkpoint: str | Path,
    data_dir: str | Path,
    segments: int = 16,
    seconds: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """KL(student || source) in nats per sample, from ``segments`` student samples of
    ``seconds`` each.

    Segment ``i`` is conditioned on the features of the first ``seconds`` of clip
    ``i mod clips`` of ``data_dir`` and scored against that clip's exact source. The student's
    log-density of its own sample is exact: ``log p_S(x_t | x_<t) = log p_noise(z_t) -
    log s_tot,t`` with the noise ``z`` that made it. The source's conditional log-density is
    exact for ``t >= p``; the estimate is the mean over those steps of the difference (the
    expected KL of the conditionals), with the standard error across segments."""
    data_dir = Path(data_dir)
    student, cfg, stats, dev = _load(checkpoint, "student", device)
    sources = load_sources(data_dir)
    entries = _entries(data_dir)
    frames = frames_for(seconds, cfg.audio)
    if any(e["frames"] < frames for e in entries):
        raise UserError(f"{data_dir}: clips are shorter than the {seconds:g} s segments asked")
    picked = [entries[i % len(entries)] for i in range(segments)]
    mel = torch.stack([torch.from_numpy(np.load(data_dir / e["mel"])[:, :frames]) for e in picked])
    generator = torch.Generator(device=dev).manual_seed(seed)
    z = student.sample_noise((segments, frames * student.hop), generator, dev)
    with torch.no_grad():
        x, _, log_s = student(z, stats.normalize(mel).to(dev))
        log_q = (student.noise_log_density(z) - log_s).double().cpu().numpy()
    x = x.double().cpu().numpy()
    per_segment = []
    for i, entry in enumerate(picked):
        source = sources[entry["id"]].frames(0, frames)
        truth = conditional_log_densities(x[i], source)
        per_segment.append(float(np.mean(log_q[i, source.order :] - truth)))
    kl, se = _mean_and_stderr(np.asarray(per_segment))
    return {
        "gap": kl,
        "stderr": se,
        "samples": int(x.size),
        "target": STUDENT_TARGET,
        "measure": "KL(student ‖ source)",
        "noise": cfg.student.noise,
    }


def gap_table(results: dict[str, dict]) -> str:
    """A markdown table of :func:`teacher_gap` / :func:`student_kl` results by model name.
    A target counts as met when the gap plus two standard errors stays below it; teachers
    also show the paired estimate of KL(source || teacher) (same samples, smaller error)."""
    lines = [
        "| model | measure (nats/sample) | gap ± s.e. | target | met | "
        "paired KL(source ‖ teacher) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        met = "yes" if r["gap"] + 2 * r["stderr"] < r["target"] else "no"
        paired = f"{r['paired_kl']:.4f} ± {r['paired_stderr']:.4f}" if "paired_kl" in r else ""
        lines.append(
            f"| {name} | {r['measure']} | {r['gap']:.4f} ± {r['stderr']:.4f} | "
            f"< {r['target']:g} | {met} | {paired} |"
        )
    return "\n".join(lines)


# The synthetic recipe's experiment folder: one sub-folder per teacher head, each with test/
# (a source folder drawn with another seed), teacher/ and student/.
RECIPE_MODELS = {
    "gaussian": ("Gaussian teacher", "Gaussian student (closed-form KL)"),
    "mol": ("mixture-of-logistics teacher", "logistic student (Monte-Carlo KL)"),
}


def known_density_report(
    exp: str | Path, segments: int = 32, seconds: float = 1.0, device: str = "cpu"
) -> tuple[str, Path]:
    """Score every trained model of the synthetic recipe's folder ``exp`` against its source;
    write ``exp/results.json`` and return ``(markdown table, path of the JSON)``."""
    exp = Path(exp)
    results: dict[str, dict] = {}
    best = Path("checkpoints") / "best.pt"
    for head, (teacher_name, student_name) in RECIPE_MODELS.items():
        run = exp / head
        if (run / "teacher" / best).is_file():
            results[teacher_name] = teacher_gap(run / "teacher" / best, run / "test", device)
        if (run / "student" / best).is_file():
            results[student_name] = student_kl(
                run / "student" / best, run / "test", segments, seconds, device=device
            )
    if not results:
        raise UserError(f"{exp}: no trained teacher or student of the synthetic recipe in it")
    out = exp / "results.json"
    atomic_write_text(out, json.dumps(results, indent=1) + "\n")
    return gap_table(results), out
