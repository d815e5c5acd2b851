"""Figures, drawn off-screen on matplotlib's Agg canvas (no display, no global pyplot state):
the log-mel images the trainer writes to TensorBoard, and the pieces the evaluation report's
figures are made of (:mod:`wavedistill.evaluation.plots`)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from wavedistill.config import AudioConfig, Config
from wavedistill.data.features import log_mel, whole_frames


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on its own Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def clip_log_mel(audio: np.ndarray | torch.Tensor, cfg: AudioConfig) -> np.ndarray | None:
    """``(n_mels, F)`` log-mel of the whole frames of ``audio`` ``(T,)``, or None when the clip
    is too short for one frame."""
    audio = torch.as_tensor(np.asarray(audio, np.float32)).reshape(-1)
    usable = whole_frames(len(audio), cfg)
    return None if usable is None else log_mel(audio[:usable], cfg).numpy()


def log_mel_label(cfg: AudioConfig) -> str:
    """The colour bar's label: the logarithm the features use (``audio.log_base``)."""
    return "log-mel (natural log)" if cfg.log_base == "e" else "log-mel (log10)"


def log_mel_image(
    ax: Axes,
    mel: np.ndarray,
    cfg: AudioConfig,
    vmin: float | None = None,
    vmax: float | None = None,
) -> AxesImage:
    """Draw ``mel`` ``(n_mels, F)`` on ``ax`` against seconds; the image, for a colour bar."""
    ax.set_ylabel("mel bin")
    seconds = mel.shape[1] * cfg.hop_length / cfg.sample_rate
    return ax.imshow(
        mel,
        origin="lower",
        aspect="auto",
        interpolation="none",
        extent=(0, seconds, 0, mel.shape[0]),
        vmin=vmin,
        vmax=vmax,
    )


def mel_figure(clip: torch.Tensor, cfg: Config) -> Figure | None:
    """A figure of the log-mel of ``clip`` ``(T,)`` for TensorBoard, or None when the clip is
    too short for one frame."""
    mel = clip_log_mel(clip.detach().float().cpu(), cfg.audio)
    if mel is None:
        return None
    fig = new_figure(8, 3)
    ax = fig.subplots()
    fig.colorbar(log_mel_image(ax, mel, cfg.audio), ax=ax, label=log_mel_label(cfg.audio))
    ax.set_xlabel("seconds")
    return fig
