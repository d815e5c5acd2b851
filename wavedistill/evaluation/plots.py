"""Figures of an evaluation: log-mel spectrograms of each clip on one colour scale, and the
teacher's held-out NLL against steps (on the Agg canvas of :mod:`wavedistill.training.figures`,
which also draws the log-mel images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from wavedistill.config import Config
from wavedistill.data.features import lowest_log_mel
from wavedistill.evaluation.results import Clip
from wavedistill.fileio import atomic_path
from wavedistill.training.figures import clip_log_mel, log_mel_image, log_mel_label, new_figure
from wavedistill.training.loop import VALIDATION_HISTORY

FIGURE_CLIPS = 3  # clips drawn in figures: enough to judge by eye, few enough to look at


def plot_clip(path: Path, clip: Clip, synthesis: dict[str, np.ndarray], cfg: Config) -> None:
    """One figure per clip: log-mel of the original and of each synthesis, one above the other
    on one time axis and one colour scale (so a quiet synthesis looks quiet)."""
    rows = [("original", clip.audio.numpy())] + list(synthesis.items())
    mels = [clip_log_mel(audio, cfg.audio) for _, audio in rows]
    seconds = len(clip.audio) / cfg.audio.sample_rate
    vmin = lowest_log_mel(cfg.audio)
    vmax = max((float(m.max()) for m in mels if m is not None), default=vmin + 1.0)
    fig = new_figure(8, 2.2 * len(rows))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    image = None
    for ax, (name, _), mel in zip(axes, rows, mels, strict=True):
        ax.set_title(f"{clip.id}: {name}" + (" (too short to draw)" if mel is None else ""))
        if mel is not None:
            image = log_mel_image(ax, mel, cfg.audio, vmin, vmax)
        ax.set_xlim(0, seconds)  # one time axis: imshow narrows it to its image
    axes[-1].set_xlabel("seconds")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label=log_mel_label(cfg.audio))
    save_figure(fig, path)


def plot_nll_curve(out_dir: Path, teacher_ckpt: Path) -> str | None:
    """``figures/teacher_nll.png``: held-out bits/sample against steps, from the
    ``validation.jsonl`` of the teacher's run folder (``<run>/checkpoints/<ckpt>``); its path
    relative to ``out_dir``, or None when the run folder has no history."""
    history = Path(teacher_ckpt).resolve().parent.parent / VALIDATION_HISTORY
    if not history.is_file():
        return None
    points: dict[int, float] = {}  # by step: a resumed run's repeated steps keep the last value
    for line in history.read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        if "nll_bits" in entry:
            points[int(entry["step"])] = float(entry["nll_bits"])
    if not points:
        return None
    steps = sorted(points)
    fig = new_figure(6, 3.2)
    ax = fig.subplots()
    ax.plot(steps, [points[s] for s in steps], marker="o")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out NLL (bits/sample)")
    ax.set_title("teacher: held-out negative log-likelihood")
    ax.grid(alpha=0.3)
    name = "figures/teacher_nll.png"
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    save_figure(fig, out_dir / name)
    return name


def draw_figures(
    out_dir: Path, clips: list[Clip], synthesis: dict[str, dict[str, np.ndarray]], cfg: Config
) -> list[str]:
    """Figures of the first ``FIGURE_CLIPS`` clips; their paths relative to ``out_dir``."""
    folder = out_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    order = [n for n in ("teacher", "student", "griffin_lim") if n in synthesis]
    for clip in clips[:FIGURE_CLIPS]:
        name = f"figures/{clip.id.replace('/', '_')}.png"
        plot_clip(out_dir / name, clip, {n: synthesis[n][clip.id] for n in order}, cfg)
        names.append(name)
    return names


def save_figure(fig: Figure, path: Path) -> None:
    """A figure as a PNG file, atomically (a full disk is one line, like every write)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
