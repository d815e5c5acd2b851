"""F0 labels of training audio at the feature frame rate (``librosa.pyin``), for the teacher's
pitch predictor (:mod:`wavedistill.models.pitch`).

Alignment. Label ``f`` describes the same instant as mel frame ``f``: pyin's analysis window
is centred where :func:`~wavedistill.data.features.log_mel` centres frame ``f`` -- on sample
``f * hop`` (``audio.frame_center = "start"``) or ``f * hop + hop / 2`` (``"middle"``) -- so a
clip of ``T`` samples gets exactly ``F = T // hop`` labels, and a hop-aligned segment pairs with
the same frames of labels as of mel. :func:`frame_centres` is the one place this offset lives;
the excitation (:mod:`wavedistill.models.excitation`) interpolates between the same centres.

Stored as ``f0/<id>.npy``: float32 ``(F,)`` in Hz, 0 where pyin finds the frame unvoiced (the
voiced flag is ``f0 > 0``). pyin runs at roughly 0.2x real time on one CPU core.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from wavedistill.config import AudioConfig, DataConfig
from wavedistill.data.corpora import read_jsonl
from wavedistill.errors import UserError


def frame_offset(cfg: AudioConfig) -> float:
    """Sample offset of frame ``f``'s centre from ``f * hop``: 0 (``start``) or ``hop / 2``."""
    return 0.0 if cfg.frame_center == "start" else cfg.hop_length / 2


def frame_centres(frames: int, cfg: AudioConfig) -> np.ndarray:
    """Sample positions of the centres of ``frames`` frames: ``(frames,)`` float64."""
    return np.arange(frames) * cfg.hop_length + frame_offset(cfg)


def pyin_frame_length(cfg: AudioConfig, fmin: float) -> int:
    """pyin's analysis window: a power of two holding at least four periods of ``fmin`` (and
    no shorter than ``audio.n_fft``), so the lowest pitch is resolved."""
    return max(cfg.n_fft, 2 ** math.ceil(math.log2(4 * cfg.sample_rate / fmin)))


def f0_labels(audio: np.ndarray, audio_cfg: AudioConfig, data_cfg: DataConfig) -> np.ndarray:
    """F0 of every feature frame of ``audio (T,)`` (``T`` a multiple of the hop): float32
    ``(T // hop,)`` in Hz, 0 for unvoiced frames (module docstring: alignment)."""
    import librosa

    hop = audio_cfg.hop_length
    frames = len(audio) // hop
    # librosa centres frame j on sample j * hop of what it is given: shift by the offset
    start = int(round(frame_offset(audio_cfg)))
    y = np.asarray(audio[start:], dtype=np.float64)
    f0, voiced, _ = librosa.pyin(
        y,
        fmin=data_cfg.pitch_fmin,
        fmax=data_cfg.pitch_fmax,
        sr=audio_cfg.sample_rate,
        frame_length=pyin_frame_length(audio_cfg, data_cfg.pitch_fmin),
        hop_length=hop,
        center=True,
    )
    f0 = np.where(voiced & np.isfinite(f0), f0, 0.0)[:frames]
    if len(f0) < frames:  # never expected; keep the pairing exact anyway
        f0 = np.pad(f0, (0, frames - len(f0)))
    return f0.astype(np.float32)


def check_pitch_labels(data_dir: str | Path, source: str) -> None:
    """Refuse, in one line, a dataset folder whose utterances lack F0 labels."""
    path = Path(data_dir)
    for split in ("train", "valid"):
        for entry in read_jsonl(path / f"{split}.jsonl"):
            if "f0" not in entry or not (path / entry["f0"]).is_file():
                raise UserError(
                    f"{path}: teacher.source={source} needs F0 labels, and "
                    f"utterance {entry['id']} has none; run `wavedistill "
                    "preprocess` with data.pitch=true"
                )
