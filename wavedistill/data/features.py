"""The one feature function, :func:`log_mel`, and per-channel statistics, :class:`FeatureStats`.

Frame alignment. ``log_mel`` returns exactly ``F = T // hop`` frames for ``T`` samples; frame
``f`` conditions the samples ``[f*hop, (f+1)*hop)``. With ``audio.frame_center = "start"``
(the default; librosa's ``center=True``, as ParallelWaveGAN and ESPnet) frame ``f``'s Hann
window (``win_length`` long, centred inside ``n_fft``) is centred on sample ``f * hop``,
reflected at the clip's edges; the STFT's extra frame, centred on sample ``T``, is dropped.
With ``"middle"`` (HiFi-GAN) the clip is reflection-padded by ``(n_fft - hop) / 2`` on each
side and framed without centring, so frame ``f`` is centred on ``f * hop + hop / 2``. Either
way a hop-aligned segment starting at sample ``s`` is paired with frames
``[s/hop, s/hop + T/hop)`` of the whole clip's features.

Magnitude, not power: mel = M |STFT| with the Slaney-normalised filterbank, the convention of
MelGAN, HiFi-GAN, ParallelWaveGAN and ESPnet. The log-mel is
``log_b(max(mel, audio.log_floor))`` with ``b = audio.log_base``; the toolkits differ in base
and floor (HiFi-GAN and NVIDIA's Tacotron 2: natural log, floor 1e-5; ParallelWaveGAN and
ESPnet: log10, floor 1e-10), and a vocoder must be trained on the convention of the acoustic
model that feeds it (presets in ``recipes/presets/``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch

from wavedistill.config import AudioConfig
from wavedistill.errors import UserError
from wavedistill.fileio import atomic_write

# -- log-mel ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> torch.Tensor:
    """Slaney-normalised mel filterbank (n_mels, n_fft // 2 + 1), float64 on the CPU."""
    basis = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64
    )
    return torch.from_numpy(basis)


@functools.lru_cache(maxsize=16)
def _mel_on(key: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _mel_filters(*key).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _hann(win_length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(win_length, periodic=True, device=device, dtype=dtype)


def mel_filters(
    cfg: AudioConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The mel filterbank of ``cfg`` (n_mels, n_fft // 2 + 1), cached per config, device, dtype."""
    key = (
        cfg.sample_rate,
        cfg.n_fft,
        cfg.n_mels,
        float(cfg.fmin),
        None if cfg.fmax is None else float(cfg.fmax),
    )
    return _mel_on(key, torch.device(device), dtype)


def log_mel(audio: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Log-mel features of audio (T,) or (B, T) -> (n_mels, F) or (B, n_mels, F), F = T // hop.

    Computed in float64 for float64 input and in float32 otherwise; see the module docstring for
    which samples each frame sees."""
    if audio.dim() not in (1, 2):
        raise ValueError(f"log_mel expects audio of shape (T,) or (B, T), got {tuple(audio.shape)}")
    num_samples = audio.shape[-1]
    if num_samples <= cfg.n_fft // 2:
        raise UserError(
            f"audio of {num_samples} samples is too short for log-mel features "
            f"(needs more than audio.n_fft // 2 = {cfg.n_fft // 2})"
        )
    dtype = torch.float64 if audio.dtype == torch.float64 else torch.float32
    x = audio.to(dtype)
    centred = cfg.frame_center == "start"
    if not centred:  # HiFi-GAN: pad (n_fft - hop) / 2 each side, frame without centring
        pad = (cfg.n_fft - cfg.hop_length) // 2
        x = torch.nn.functional.pad(x.reshape(-1, 1, num_samples), (pad, pad), mode="reflect")
        x = x.reshape(*audio.shape[:-1], -1)
    window = _hann(cfg.win_length, x.device, dtype)
    spec = torch.stft(
        x,
        cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=centred,
        pad_mode="reflect",
        return_complex=True,
    )
    spec = spec[..., : num_samples // cfg.hop_length]  # (..., n_fft // 2 + 1, F)
    if cfg.magnitude_eps > 0:
        magnitude = torch.sqrt(spec.real**2 + spec.imag**2 + cfg.magnitude_eps)
    else:
        magnitude = spec.abs()
    mel = mel_filters(cfg, x.device, dtype) @ magnitude  # (..., n_mels, F)
    return log_of(torch.clamp(mel, min=cfg.log_floor), cfg)


def shortest_clip(cfg: AudioConfig) -> int:
    """Fewest samples a clip needs in whole frames for :func:`log_mel`: the first multiple of
    the hop above ``n_fft // 2`` (the reflection padding of the first frame needs more samples
    than half a window)."""
    return (cfg.n_fft // 2 // cfg.hop_length + 1) * cfg.hop_length


def whole_frames(num_samples: int, cfg: AudioConfig) -> int | None:
    """Samples of a clip of ``num_samples`` that fill whole frames (the largest multiple of the
    hop, ``F * hop``), or None when they are fewer than :func:`shortest_clip`. Every place that
    crops audio to frames asks here."""
    usable = num_samples - num_samples % cfg.hop_length
    return usable if usable >= shortest_clip(cfg) else None


def frames_for(seconds: float, cfg: AudioConfig) -> int:
    """Whole mel frames nearest to ``seconds`` of audio (at least one)."""
    return max(1, round(seconds * cfg.sample_rate / cfg.hop_length))


def log_of(x: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """``log_b(x)`` in the base of ``audio.log_base``."""
    return torch.log(x) if cfg.log_base == "e" else torch.log10(x)


def exp_of(x, cfg: AudioConfig):
    """The inverse of :func:`log_of` for tensors or arrays: ``b ** x``."""
    return np.exp(x) if cfg.log_base == "e" else np.power(10.0, x)


def lowest_log_mel(cfg: AudioConfig) -> float:
    """The smallest value :func:`log_mel` can return: the log of ``audio.log_floor``."""
    return math.log(cfg.log_floor) if cfg.log_base == "e" else math.log10(cfg.log_floor)


# -- statistics ------------------------------------------------------------------------------


@dataclass
class FeatureStats:
    """Per-channel mean and standard deviation of log-mel features, each (n_mels,) float32.

    ``normalize`` maps features to zero mean and unit variance per channel; it accepts numpy
    arrays or torch tensors of shape (n_mels, F) or (B, n_mels, F)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self):
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(self.std, dtype=torch.float32).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(
                f"mean {tuple(self.mean.shape)} and std {tuple(self.std.shape)} "
                "have different shapes"
            )

    @property
    def n_mels(self) -> int:
        return self.mean.numel()

    @classmethod
    def compute(
        cls, mels: Iterable, std_floor: float = AudioConfig.stats_std_floor
    ) -> FeatureStats:
        """Stream over (n_mels, F) arrays or tensors; float64 accumulators merged batch by batch
        (Chan et al.), so long corpora lose no precision. The std is the population std,
        floored at ``std_floor`` so a constant channel does not divide by ~0."""
        count, mean, m2 = 0, None, None
        for mel in mels:
            x = np.asarray(mel.cpu() if isinstance(mel, torch.Tensor) else mel, dtype=np.float64)
            n = x.shape[-1]
            if n == 0:
                continue
            batch_mean = x.mean(axis=-1)
            batch_m2 = ((x - batch_mean[:, None]) ** 2).sum(axis=-1)
            if mean is None:
                count, mean, m2 = n, batch_mean, batch_m2
                continue
            total = count + n
            delta = batch_mean - mean
            mean = mean + delta * (n / total)
            m2 = m2 + batch_m2 + delta**2 * (count * n / total)
            count = total
        if mean is None or m2 is None:
            raise ValueError("FeatureStats.compute needs at least one frame")
        std = np.maximum(np.sqrt(m2 / count), std_floor)
        return cls(torch.from_numpy(mean), torch.from_numpy(std))

    @classmethod
    def for_features(cls, mels: Iterable, cfg: AudioConfig) -> FeatureStats:
        """The statistics a corpus's models normalise with: :meth:`compute` over ``mels``, or
        the identity (mean 0, std 1) when ``audio.normalize`` is False."""
        if cfg.normalize:
            return cls.compute(mels, cfg.stats_std_floor)
        return cls(torch.zeros(cfg.n_mels), torch.ones(cfg.n_mels))

    def _per_channel(self, mel):
        """mean and std shaped (n_mels, 1), in mel's kind, dtype and device."""
        if mel.shape[-2] != self.n_mels:
            raise ValueError(
                f"features have {mel.shape[-2]} channels, statistics have {self.n_mels}"
            )
        if isinstance(mel, torch.Tensor):
            return (
                self.mean.to(mel.device, mel.dtype)[:, None],
                self.std.to(mel.device, mel.dtype)[:, None],
            )
        return (
            self.mean.numpy().astype(mel.dtype)[:, None],
            self.std.numpy().astype(mel.dtype)[:, None],
        )

    def normalize(self, mel):
        """(..., n_mels, F) log-mel -> (mel - mean) / std."""
        mean, std = self._per_channel(mel)
        return (mel - mean) / std

    def denormalize(self, mel):
        """Inverse of :meth:`normalize`."""
        mean, std = self._per_channel(mel)
        return mel * std + mean

    def to_dict(self) -> dict[str, torch.Tensor]:
        """{"mean", "std"} float32 tensors, as stored inside checkpoints."""
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureStats:
        return cls(data["mean"], data["std"])

    def save(self, path: str | Path) -> None:
        """Write ``mean`` and ``std`` (n_mels,) to an ``.npz`` file, atomically."""
        atomic_write(path, lambda f: np.savez(f, mean=self.mean.numpy(), std=self.std.numpy()))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["mean"], data["std"])
        except FileNotFoundError:
            raise UserError(f"{path}: no such statistics file") from None
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"{path}: not a statistics file with 'mean' and 'std' ({exc})"
            ) from None
