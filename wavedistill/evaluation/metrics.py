"""Signal-quality metrics: a synthesised clip against the original it should reproduce.

Every metric takes two float waveforms of equal length, ``ref`` (the original) and ``est``
(the synthesis), as ``(T,)`` numpy arrays in [-1, 1], and returns one float.

Built in (torch and numpy only):

- ``stft_distance``: the multi-resolution STFT distance of :mod:`wavedistill.dsp.spectral`, at the
  power loss's resolutions (``distill.power_*``), so evaluation and training measure alike.
- ``log_spectral_distance``: root-mean-square difference of the log power spectra in dB,
  averaged over frames, on the feature STFT (``audio.n_fft``, ``hop_length``, ``win_length``).
- ``loudness_difference_db``: RMS level of ``est`` minus that of ``ref`` (the distillation
  objective's whisper detector); strongly negative values are the whispering student that the
  power loss exists to prevent. Its batched torch form, :func:`loudness_gap_db`, is what the
  objective logs, so training logs and reports measure alike.

With the ``metrics`` extra (``pip install 'wavedistill[metrics]'``), imported only when used:

- ``mel_cepstral_distortion`` (pysptk): SPTK mel-cepstral analysis per frame, c0 (energy)
  excluded, MCD = 10/ln10 · sqrt(2 Σ_d (c_d − ĉ_d)²) dB averaged over frames. The clips of a
  copy-synthesis are time-aligned, so no dynamic time warping is applied.
- ``pesq_wideband`` (pesq): ITU-T P.862.2 wide-band PESQ (MOS-LQO, 1.0 to 4.64) at 16 kHz;
  other rates are resampled first.
- ``stoi`` (pystoi): short-time objective intelligibility, 0 to 1.

A metric that cannot be computed raises :class:`NotApplicable` with the reason (a silent
reference, a clip too short, the extra not installed); :func:`compare` turns the reason into
the text a report shows in place of the number.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import librosa
import numpy as np
import torch

from wavedistill.config import AudioConfig, Config
from wavedistill.dsp.levels import SILENCE_DB, levels_db, loudness_gap_db
from wavedistill.dsp.spectral import MultiResolutionSTFT, stft_power

# Power floor of the log-spectral distance: the same -120 dB, as a power ratio.
POWER_FLOOR = 10.0 ** (SILENCE_DB / 10.0)
# Order of the mel-cepstrum for MCD (coefficients c1..c24; c0 is excluded), the usual
# choice for speech at 16-24 kHz.
MCEP_ORDER = 24
# PESQ is defined for 8 kHz (narrow-band) and 16 kHz (wide-band); wide-band is the
# meaningful one for a vocoder, so other rates are resampled to it.
PESQ_RATE = 16000
# STOI scores 30-frame segments of 256-sample frames, hop 128, at 10 kHz: a clip needs at
# least 29 * 128 + 256 samples at 10 kHz of speech (0.397 s), or pystoi has nothing to score.
STOI_MIN_SECONDS = (29 * 128 + 256) / 10000
EXTRA_HINT = "not installed (pip install 'wavedistill[metrics]')"


class NotApplicable(Exception):
    """The metric has no value for this pair of clips; the message says why."""


def _require(module: str):
    """Import an optional dependency of the ``metrics`` extra, or raise NotApplicable."""
    try:
        with warnings.catch_warnings():
            # pysptk imports pkg_resources, which warns on every import with new setuptools.
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError:
        raise NotApplicable(f"{module} {EXTRA_HINT}") from None


def _long_enough(x: np.ndarray, n_fft: int) -> None:
    """A centred STFT reflect-pads n_fft // 2 samples, which needs more samples than that."""
    if x.size <= n_fft // 2:
        raise NotApplicable(
            f"not applicable (a clip of {x.size} samples is too short for an STFT of {n_fft})"
        )


def _not_silent(ref: np.ndarray) -> None:
    """Intelligibility and quality scores compare speech; a silent reference has none."""
    if level_db(ref) <= SILENCE_DB:
        raise NotApplicable("not applicable (silent reference)")


def _pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    if ref.shape != est.shape:
        raise ValueError(f"clips differ in length: {ref.size} and {est.size} samples")
    return ref, est


# -- built in --------------------------------------------------------------------------------


def level_db(x: np.ndarray) -> float:
    """RMS level of a clip ``(T,)`` in dB relative to full scale, floored at ``SILENCE_DB``
    (:func:`levels_db` of one clip)."""
    return float(levels_db(torch.as_tensor(np.asarray(x, dtype=np.float64))[None])[0])


def loudness_difference_db(ref: np.ndarray, est: np.ndarray) -> float:
    """``level_db(est) - level_db(ref)``: negative when the synthesis is too quiet."""
    ref, est = _pair(ref, est)
    return float(loudness_gap_db(torch.from_numpy(est)[None], torch.from_numpy(ref)[None])[0])


def _power_spectrogram(x: np.ndarray, audio: AudioConfig) -> torch.Tensor:
    """(T,) -> (frames, n_fft // 2 + 1) float64 power spectrum on the feature STFT."""
    _long_enough(x, audio.n_fft)
    power = stft_power(torch.from_numpy(x)[None], audio.n_fft, audio.hop_length, audio.win_length)
    return power[0].transpose(0, 1)


def log_spectral_distance(ref: np.ndarray, est: np.ndarray, audio: AudioConfig) -> float:
    """LSD in dB: per frame sqrt(mean_f (10 log10 P_ref - 10 log10 P_est)^2), mean over frames.

    Powers are floored at ``POWER_FLOOR`` so silent frames of both clips agree exactly."""
    ref, est = _pair(ref, est)
    log_ref = 10.0 * torch.log10(_power_spectrogram(ref, audio).clamp_min(POWER_FLOOR))
    log_est = 10.0 * torch.log10(_power_spectrogram(est, audio).clamp_min(POWER_FLOOR))
    return float((log_ref - log_est).square().mean(dim=1).sqrt().mean())


def stft_distance(ref: np.ndarray, est: np.ndarray, cfg: Config) -> float:
    """Multi-resolution STFT distance at the power loss's resolutions (0 for identical clips)."""
    ref, est = _pair(ref, est)
    d = cfg.distill
    _long_enough(ref, max(d.power_fft_sizes))
    distance = MultiResolutionSTFT.from_config(d, cfg.audio)
    # float32, as in training: a summary distance needs no more, and it is twice as fast
    return float(distance(torch.from_numpy(est).float()[None], torch.from_numpy(ref).float()[None]))


# -- optional (the `metrics` extra) ------------------------------------------------------------


def _frames(x: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """(T,) -> (frames, n_fft) windowed frames laid out as the feature STFT lays them out
    (centred, reflect-padded, Hann window of win_length centred in n_fft)."""
    n_fft, hop, win = audio.n_fft, audio.hop_length, audio.win_length
    padded = np.pad(x, n_fft // 2, mode="reflect" if x.size > n_fft // 2 else "constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = np.zeros(n_fft)
    start = (n_fft - win) // 2
    window[start : start + win] = np.hanning(win + 1)[:-1]  # periodic Hann, as torch.hann_window
    return frames * window


def mel_cepstrum(x: np.ndarray, audio: AudioConfig) -> np.ndarray:
    """(T,) -> (frames, MCEP_ORDER + 1) SPTK mel-cepstra, all-pass constant for the rate."""
    pysptk = _require("pysptk")
    alpha = pysptk.util.mcepalpha(audio.sample_rate)
    # etype=1 with a tiny eps adds it to the periodogram, so silent frames stay finite.
    return np.stack(
        [pysptk.mcep(frame, MCEP_ORDER, alpha, etype=1, eps=1e-8) for frame in _frames(x, audio)]
    )


def mel_cepstral_distortion(ref: np.ndarray, est: np.ndarray, audio: AudioConfig) -> float:
    """MCD in dB over c1..c24 (energy c0 excluded), mean over frames; 0 for identical clips."""
    ref, est = _pair(ref, est)
    _long_enough(ref, audio.n_fft)
    diff = mel_cepstrum(ref, audio)[:, 1:] - mel_cepstrum(est, audio)[:, 1:]
    per_frame = 10.0 / math.log(10.0) * np.sqrt(2.0 * np.sum(diff**2, axis=1))
    return float(per_frame.mean())


def _at_rate(x: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    if sample_rate == target:
        return x

    return librosa.resample(x, orig_sr=sample_rate, target_sr=target, res_type="soxr_hq")


def pesq_wideband(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ (MOS-LQO, 1.0-4.64); raises NotApplicable on silence or short clips."""
    pesq = _require("pesq")
    ref, est = _pair(ref, est)
    _not_silent(ref)
    ref, est = _at_rate(ref, sample_rate, PESQ_RATE), _at_rate(est, sample_rate, PESQ_RATE)
    try:
        return float(pesq.pesq(PESQ_RATE, ref, est, "wb"))
    except pesq.PesqError as exc:  # no speech found, or under a quarter of a second
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise NotApplicable(f"not applicable ({str(reason).lower()})") from None


def stoi(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    """STOI in [0, 1]; raises NotApplicable when too little speech is left to score."""
    pystoi = _require("pystoi")
    ref, est = _pair(ref, est)
    _not_silent(ref)
    if ref.size < STOI_MIN_SECONDS * sample_rate:
        raise NotApplicable(f"not applicable (under {STOI_MIN_SECONDS:.2f} s)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi.stoi(ref, est, sample_rate, extended=False))
    # pystoi returns a placeholder 1e-5 with a warning when fewer than 30 frames of speech
    # remain after it removes silent frames.
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise NotApplicable(f"not applicable (under {STOI_MIN_SECONDS:.2f} s of speech)")
    return value


# -- all at once -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: str  # "lower" | "higher" | "closer to 0"
    compute: Callable[[np.ndarray, np.ndarray, Config], float]


METRICS: tuple[Metric, ...] = (
    Metric("stft_distance", "", "lower", stft_distance),
    Metric(
        "log_spectral_distance",
        "dB",
        "lower",
        lambda r, e, cfg: log_spectral_distance(r, e, cfg.audio),
    ),
    Metric(
        "loudness_difference", "dB", "closer to 0", lambda r, e, cfg: loudness_difference_db(r, e)
    ),
    Metric("mcd", "dB", "lower", lambda r, e, cfg: mel_cepstral_distortion(r, e, cfg.audio)),
    Metric(
        "pesq_wb", "MOS", "higher", lambda r, e, cfg: pesq_wideband(r, e, cfg.audio.sample_rate)
    ),
    Metric("stoi", "", "higher", lambda r, e, cfg: stoi(r, e, cfg.audio.sample_rate)),
)


def compare(ref: np.ndarray, est: np.ndarray, cfg: Config) -> dict[str, float | str]:
    """Every metric of ``METRICS`` for one pair of clips: a float, or the text saying why
    there is none ("pesq not installed ...", "not applicable (...)")."""
    out: dict[str, float | str] = {}
    for metric in METRICS:
        try:
            out[metric.name] = metric.compute(ref, est, cfg)
        except NotApplicable as exc:
            out[metric.name] = str(exc)
    return out
