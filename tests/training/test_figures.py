"""Figures: the log-mel image of a clip (None when too short for one frame), labelled by the
log base of the features, drawn on the Agg canvas without pyplot."""

import dataclasses

import numpy as np
import torch
from conftest import tiny_config
from matplotlib.backends.backend_agg import FigureCanvasAgg

from wavedistill.training.figures import clip_log_mel, log_mel_label, mel_figure


def test_a_figure_of_a_clip_is_one_image_with_a_colour_bar_on_the_agg_canvas():
    cfg = tiny_config()
    fig = mel_figure(0.1 * torch.randn(cfg.audio.hop_length * 12 + 5), cfg)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    image, bar = fig.axes
    assert image.images[0].get_array().shape == (cfg.audio.n_mels, 12)  # whole frames
    assert bar.get_ylabel() == "log-mel (natural log)"


def test_a_clip_too_short_for_one_frame_has_no_figure():
    cfg = tiny_config()
    assert mel_figure(torch.zeros(cfg.audio.n_fft // 2), cfg) is None
    assert clip_log_mel(np.zeros(cfg.audio.n_fft // 2, np.float32), cfg.audio) is None


def test_the_colour_bar_names_the_log_base_of_the_features():
    audio = tiny_config().audio
    assert log_mel_label(dataclasses.replace(audio, log_base="10")) == "log-mel (log10)"
    assert log_mel_label(audio) == "log-mel (natural log)"
