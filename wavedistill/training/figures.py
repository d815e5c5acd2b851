"""Figures the trainer writes to TensorBoard beside its audio (matplotlib, off-screen)."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
from torch import Tensor

from wavedistill.config import Config
from wavedistill.data.features import log_mel


def mel_figure(clip: Tensor, cfg: Config):
    """A matplotlib figure of the log-mel spectrogram of ``clip`` (T,)."""
    matplotlib.use("Agg")  # no display: figures are only rendered into TensorBoard events

    mel = log_mel(clip, cfg.audio).float().cpu().numpy()  # (n_mels, F)
    fig, ax = plt.subplots(figsize=(8, 3))
    image = ax.imshow(mel, origin="lower", aspect="auto", interpolation="none")
    ax.set_xlabel("frame")
    ax.set_ylabel("mel channel")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig
