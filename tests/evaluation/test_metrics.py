"""Signal-quality metrics on known cases: identical clips score perfectly, added noise at a
known SNR scores monotonically worse, closed forms hold for pure gains, and clips without a
value (silence, too short, extra not installed) say why instead of failing."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wavedistill.config import Config
from wavedistill.data.audio import load_audio
from wavedistill.evaluation import metrics

CLIP = Path(__file__).resolve().parents[2] / "data" / "arctic" / "arctic_a0007.wav"
SNRS_DB = (30.0, 20.0, 10.0, 0.0)


@pytest.fixture(scope="module")
def cfg() -> Config:
    return Config()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """2 s of the bundled 16 kHz speech clip, float64."""
    return load_audio(CLIP, 16000)[8000:40000].astype(np.float64)


def with_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """``x`` plus white noise whose power is exactly ``snr_db`` below the power of ``x``."""
    noise = np.random.default_rng(seed).standard_normal(x.shape)
    noise *= math.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return x + noise


def strictly_increasing(values) -> bool:
    return all(a < b for a, b in zip(values[:-1], values[1:], strict=True))


# -- built-in metrics ------------------------------------------------------------------------


def test_identical_clips_have_zero_distances(speech, cfg):
    assert metrics.stft_distance(speech, speech, cfg) == pytest.approx(0.0, abs=1e-9)
    assert metrics.log_spectral_distance(speech, speech, cfg.audio) == 0.0
    assert metrics.loudness_difference_db(speech, speech) == 0.0


def test_built_in_distances_grow_as_the_snr_falls(speech, cfg):
    noisy = [with_noise(speech, snr) for snr in SNRS_DB]
    stft = [metrics.stft_distance(speech, y, cfg) for y in noisy]
    lsd = [metrics.log_spectral_distance(speech, y, cfg.audio) for y in noisy]
    assert strictly_increasing(stft), stft
    assert strictly_increasing(lsd), lsd


def test_loudness_difference_of_a_gain_is_its_decibels(speech):
    for gain in (0.1, 0.5, 2.0):
        expected = 20 * math.log10(gain)
        assert metrics.loudness_difference_db(speech, gain * speech) == pytest.approx(expected)


def test_log_spectral_distance_of_a_gain_is_its_decibels(speech, cfg):
    # Every bin differs by exactly 20 log10(g) dB while no bin hits the power floor.
    assert metrics.log_spectral_distance(speech, 0.5 * speech, cfg.audio) == pytest.approx(
        20 * math.log10(2.0), rel=1e-6
    )


def test_log_spectral_distance_matches_a_numpy_brute_force(speech, cfg):
    est = with_noise(speech, 10.0)
    a = cfg.audio

    def log_power(x):
        padded = np.pad(x, a.n_fft // 2, mode="reflect")
        n_frames = 1 + (len(padded) - a.n_fft) // a.hop_length
        window = np.zeros(a.n_fft)
        start = (a.n_fft - a.win_length) // 2
        n = np.arange(a.win_length)
        window[start : start + a.win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / a.win_length)
        rows = []
        for f in range(n_frames):
            frame = padded[f * a.hop_length : f * a.hop_length + a.n_fft] * window
            power = np.abs(np.fft.rfft(frame)) ** 2
            rows.append(10 * np.log10(np.maximum(power, metrics.POWER_FLOOR)))
        return np.array(rows)

    diff = log_power(speech) - log_power(est)
    expected = np.mean(np.sqrt(np.mean(diff**2, axis=1)))
    assert metrics.log_spectral_distance(speech, est, a) == pytest.approx(expected, rel=1e-6)


def test_digital_silence_has_the_floor_level_and_finite_distances(cfg):
    silence = np.zeros(16000)
    assert metrics.level_db(silence) == metrics.SILENCE_DB
    assert metrics.loudness_difference_db(silence, silence) == 0.0
    assert metrics.log_spectral_distance(silence, silence, cfg.audio) == 0.0


def test_the_metrics_know_no_training_objective():
    # signal code is a leaf: the objective uses the loudness measure, never the other way round
    code = (
        "import sys, numpy as np, wavedistill.evaluation.metrics as m; x = np.full(64, 0.1); "
        "m.level_db(x); m.loudness_difference_db(x, x); "
        "print('wavedistill.objectives.distillation' in sys.modules)"
    )
    root = Path(metrics.__file__).resolve().parents[2]  # the package under test comes first
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert result.stdout.strip() == "False"


def test_clips_of_different_lengths_are_refused(speech):
    with pytest.raises(ValueError, match="differ in length"):
        metrics.loudness_difference_db(speech, speech[:-1])


def test_a_clip_too_short_for_the_stft_is_not_applicable(cfg):
    short = np.full(100, 0.1)
    result = metrics.compare(short, short, cfg)
    assert result["log_spectral_distance"].startswith("not applicable")
    assert result["stft_distance"].startswith("not applicable")
    assert result["loudness_difference"] == 0.0


# -- the `metrics` extra ---------------------------------------------------------------------


def test_mcd_is_zero_for_identical_clips_and_grows_with_noise(speech, cfg):
    pytest.importorskip("pysptk")
    assert metrics.mel_cepstral_distortion(speech, speech, cfg.audio) == 0.0
    mcd = [
        metrics.mel_cepstral_distortion(speech, with_noise(speech, s), cfg.audio) for s in SNRS_DB
    ]
    assert strictly_increasing(mcd), mcd


def test_mcd_ignores_a_gain(speech, cfg):
    # A gain moves only c0 (energy), which MCD leaves out.
    pytest.importorskip("pysptk")
    assert metrics.mel_cepstral_distortion(speech, 0.5 * speech, cfg.audio) < 0.05


def test_pesq_is_perfect_for_identical_clips_and_falls_with_noise(speech):
    pytest.importorskip("pesq")
    assert metrics.pesq_wideband(speech, speech, 16000) == pytest.approx(4.64, abs=0.01)
    scores = [metrics.pesq_wideband(speech, with_noise(speech, s), 16000) for s in SNRS_DB]
    assert strictly_increasing(scores[::-1]), scores


def test_pesq_resamples_other_rates(speech):
    pytest.importorskip("pesq")
    import librosa

    at_22k = librosa.resample(speech, orig_sr=16000, target_sr=22050)
    assert metrics.pesq_wideband(at_22k, at_22k, 22050) == pytest.approx(4.64, abs=0.01)


def test_stoi_is_one_for_identical_clips_and_falls_with_noise(speech):
    pytest.importorskip("pystoi")
    assert metrics.stoi(speech, speech, 16000) == pytest.approx(1.0, abs=1e-6)
    scores = [metrics.stoi(speech, with_noise(speech, s), 16000) for s in SNRS_DB]
    assert strictly_increasing(scores[::-1]), scores


def test_silence_and_short_clips_are_not_applicable_for_pesq_and_stoi(speech, cfg):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    silence = np.zeros(32000)
    result = metrics.compare(silence, silence, cfg)
    assert result["pesq_wb"].startswith("not applicable")
    assert result["stoi"].startswith("not applicable")
    short = speech[:3000]
    with pytest.raises(metrics.NotApplicable):
        metrics.pesq_wideband(short, short, 16000)
    with pytest.raises(metrics.NotApplicable):
        metrics.stoi(short, short, 16000)


def test_a_missing_extra_is_reported_as_not_installed(speech, cfg, monkeypatch):
    for module in ("pesq", "pystoi", "pysptk"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    result = metrics.compare(speech, speech, cfg)
    for name in ("mcd", "pesq_wb", "stoi"):
        assert "not installed" in result[name]
    assert result["log_spectral_distance"] == 0.0
