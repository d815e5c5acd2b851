"""STFT magnitudes against a numpy brute force, and the spectral distances on cases with closed
forms: identical clips, silence, pure gains, averages over resolutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wavedistill.dsp.spectral import MultiResolutionSTFT, stft, stft_power
from wavedistill.errors import UserError


def stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, win_length: int) -> torch.Tensor:
    """``|STFT|`` ``(B, T) -> (B, n_fft // 2 + 1, frames)``: the reference the power is
    checked against."""
    return stft(x, n_fft, hop, win_length).abs()


RESOLUTIONS = ([128, 256, 64], [32, 64, 16], [96, 256, 48])


@pytest.fixture
def noise() -> torch.Tensor:
    """Two clips of white noise (every bin far above the log floor), float64."""
    torch.manual_seed(0)
    return 0.1 * torch.randn(2, 1024, dtype=torch.float64)


def brute_force_magnitude(x: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """Reflect-pad by n_fft/2, periodic Hann of ``win`` centred in ``n_fft``, |rfft| per frame:
    (bins, frames)."""
    padded = np.pad(x, n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    n = np.arange(win)
    start = (n_fft - win) // 2
    window[start : start + win] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win)
    frames = 1 + (len(padded) - n_fft) // hop
    return np.stack(
        [np.abs(np.fft.rfft(padded[f * hop : f * hop + n_fft] * window)) for f in range(frames)],
        axis=1,
    )


@pytest.mark.parametrize("n_fft,hop,win", [(128, 32, 96), (64, 16, 64)])
def test_stft_magnitude_matches_a_numpy_brute_force(noise, n_fft, hop, win):
    got = stft_magnitude(noise, n_fft, hop, win)
    for i in range(noise.shape[0]):
        expected = brute_force_magnitude(noise[i].numpy(), n_fft, hop, win)
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_stft_power_is_the_squared_magnitude(noise):
    power = stft_power(noise, 128, 32, 96)
    torch.testing.assert_close(power, stft_magnitude(noise, 128, 32, 96).square())


def test_identical_clips_have_zero_distances(noise):
    distances = MultiResolutionSTFT(*RESOLUTIONS).distances(noise, noise)
    assert all(float(v) == 0.0 for v in distances.values())


def test_power_loss_of_silence_is_one(noise):
    stft = MultiResolutionSTFT(*RESOLUTIONS)
    assert float(stft.power(torch.zeros_like(noise), noise)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("gain", [0.25, 0.5, 2.0])
def test_distances_of_a_gain_have_closed_forms(noise, gain):
    # |X| = g |Y| in every bin: power error (g^2 - 1)^2, convergence |g - 1|, log |log g|
    d = MultiResolutionSTFT(*RESOLUTIONS).distances(gain * noise, noise)
    assert float(d["power"]) == pytest.approx((gain**2 - 1) ** 2, rel=1e-9)
    assert float(d["spectral_convergence"]) == pytest.approx(abs(gain - 1), rel=1e-9)
    assert float(d["log_magnitude"]) == pytest.approx(abs(math.log(gain)), rel=1e-9)


def test_multi_resolution_is_the_mean_of_single_resolutions(noise):
    torch.manual_seed(1)
    other = noise + 0.05 * torch.randn_like(noise)
    multi = MultiResolutionSTFT(*RESOLUTIONS)
    singles = [MultiResolutionSTFT([f], [h], [w]) for f, h, w in zip(*RESOLUTIONS, strict=True)]
    for name, value in multi.distances(other, noise).items():
        expected = np.mean([float(s.distances(other, noise)[name]) for s in singles])
        assert float(value) == pytest.approx(expected, rel=1e-12)
    assert float(multi(other, noise)) == pytest.approx(
        float(
            multi.distances(other, noise)["spectral_convergence"]
            + multi.distances(other, noise)["log_magnitude"]
        ),
        rel=1e-12,
    )


def test_power_loss_gradient_is_finite_at_silence(noise):
    x = torch.zeros_like(noise, requires_grad=True)
    MultiResolutionSTFT(*RESOLUTIONS).power(x, noise).backward()
    assert torch.isfinite(x.grad).all()


def test_power_loss_gradient_matches_finite_differences(noise):
    torch.manual_seed(2)
    x = (0.5 * noise + 0.01 * torch.randn_like(noise))[:, :256].clone().requires_grad_(True)
    stft = MultiResolutionSTFT([64], [16], [48])
    assert torch.autograd.gradcheck(lambda v: stft.power(v, noise[:, :256]), (x,))


def test_a_clip_too_short_for_the_fft_is_a_user_error():
    with pytest.raises(UserError, match="too short for an STFT of size 256"):
        stft_magnitude(torch.zeros(1, 100), 256, 64, 256)
