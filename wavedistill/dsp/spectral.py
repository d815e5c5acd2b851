"""STFT powers and multi-resolution spectral distances, shared by the power loss of
distillation and by evaluation.

The STFT is ``torch.stft`` with a periodic Hann window of ``win_length`` centred in ``n_fft``
samples and ``center=True`` (the signal is reflect-padded by ``n_fft // 2`` on both sides), so
frame ``f`` is centred on sample ``f * hop``. Magnitudes are not normalised: a frame is
``|rfft(window * segment)|``. Everything works on ``(B, T)`` audio and returns
``(B, n_fft // 2 + 1, frames)`` spectra.

Distances between a synthesis ``x`` and its reference ``y`` (each averaged over resolutions):

- ``power``: the power loss of Parallel WaveNet, ``|| |X|^2 - |Y|^2 ||^2`` summed over bins,
  frames and the batch, divided by ``|| |Y|^2 ||^2``. The division by the reference's own
  energy is a per-batch constant, so the gradient is that of the plain squared power error;
  it makes the value read 1 for a silent synthesis and 0 for a perfect match, whatever the FFT
  size, the window and the loudness of the corpus, so its weight means the same everywhere.
- ``spectral_convergence``: ``|| |X| - |Y| ||_F / || |Y| ||_F``.
- ``log_magnitude``: mean over bins and frames of ``|log max(|X|, floor) - log max(|Y|, floor)|``.
  ``spectral_convergence + log_magnitude`` is the usual multi-resolution STFT distance of
  copy-synthesis (:meth:`MultiResolutionSTFT.__call__`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wavedistill.config import AudioConfig
from wavedistill.errors import UserError

# One home for the log floor: the feature function's (magnitudes below it count as silence).
DEFAULT_LOG_FLOOR = AudioConfig.log_floor


def stft(x: Tensor, n_fft: int, hop: int, win_length: int) -> Tensor:
    """Complex STFT ``(B, T) -> (B, n_fft // 2 + 1, frames)`` (see the module docstring)."""
    if x.shape[-1] <= n_fft // 2:
        raise UserError(
            f"a clip of {x.shape[-1]} samples is too short for an STFT of size "
            f"{n_fft} (it needs more than {n_fft // 2})"
        )
    # built per call (it is cheap): a cached window made under inference_mode could not be
    # saved for a later backward pass
    window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
    return torch.stft(
        x,
        n_fft,
        hop,
        win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )


def stft_power(x: Tensor, n_fft: int, hop: int, win_length: int) -> Tensor:
    """``|STFT|^2`` ``(B, T) -> (B, n_fft // 2 + 1, frames)``; differentiable everywhere
    (no square root, so silent bins have finite gradients)."""
    spec = torch.view_as_real(stft(x, n_fft, hop, win_length))
    return spec.square().sum(-1)


def power_distance(x_power: Tensor, y_power: Tensor) -> Tensor:
    """``sum (P_x - P_y)^2 / sum P_y^2`` over all entries: a scalar (see the module docstring).
    ``x_power``, ``y_power``: ``(B, bins, frames)``."""
    scale = y_power.detach().square().sum().clamp_min(torch.finfo(y_power.dtype).tiny)
    return (x_power - y_power).square().sum() / scale


def log_magnitude_distance(x_power: Tensor, y_power: Tensor, floor: float) -> Tensor:
    """Mean ``|log max(|X|, floor) - log max(|Y|, floor)|``, from powers: a scalar."""
    floor_power = floor * floor
    return (
        0.5
        * (torch.log(x_power.clamp_min(floor_power)) - torch.log(y_power.clamp_min(floor_power)))
        .abs()
        .mean()
    )


def spectral_convergence(x_power: Tensor, y_power: Tensor) -> Tensor:
    """``|| |X| - |Y| ||_F / || |Y| ||_F`` from powers: a scalar. Magnitudes are square roots
    of powers clamped at the smallest normal float so that silent bins have finite gradients."""
    tiny = torch.finfo(x_power.dtype).tiny
    x_mag, y_mag = x_power.clamp_min(tiny).sqrt(), y_power.clamp_min(tiny).sqrt()
    return torch.linalg.vector_norm(x_mag - y_mag) / torch.linalg.vector_norm(y_mag).clamp_min(tiny)


class MultiResolutionSTFT:
    """Spectral distances at several STFT resolutions (FFT size, hop, window length), averaged.

    ``distance(x, y)`` (the instance called) is ``spectral_convergence + log_magnitude``;
    :meth:`power` is the power loss; :meth:`distances` gives every term. ``x`` is the
    synthesis, ``y`` the reference, both ``(B, T)``; every result is a scalar tensor.
    """

    def __init__(
        self,
        fft_sizes: Sequence[int],
        hop_sizes: Sequence[int],
        win_lengths: Sequence[int],
        log_floor: float = DEFAULT_LOG_FLOOR,
    ):
        if not (len(fft_sizes) == len(hop_sizes) == len(win_lengths) > 0):
            raise UserError(
                "distill.power_fft_sizes/power_hop_sizes/power_win_lengths must be "
                "non-empty and of equal lengths"
            )
        self.resolutions = list(zip(fft_sizes, hop_sizes, win_lengths, strict=True))
        self.log_floor = log_floor

    def _powers(self, x: Tensor, y: Tensor):
        for n_fft, hop, win in self.resolutions:
            yield stft_power(x, n_fft, hop, win), stft_power(y, n_fft, hop, win)

    def power(self, x: Tensor, y: Tensor) -> Tensor:
        """The power loss, averaged over resolutions."""
        terms = [power_distance(px, py) for px, py in self._powers(x, y)]
        return torch.stack(terms).mean()

    def distances(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``{"power", "spectral_convergence", "log_magnitude"}``, each averaged over
        resolutions (one STFT per resolution and signal)."""
        sums: dict[str, Tensor] = {}
        for px, py in self._powers(x, y):
            terms = {
                "power": power_distance(px, py),
                "spectral_convergence": spectral_convergence(px, py),
                "log_magnitude": log_magnitude_distance(px, py, self.log_floor),
            }
            for key, value in terms.items():
                sums[key] = sums[key] + value if key in sums else value
        return {k: v / len(self.resolutions) for k, v in sums.items()}

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Copy-synthesis distance ``spectral_convergence + log_magnitude`` (0 when equal)."""
        d = self.distances(x, y)
        return d["spectral_convergence"] + d["log_magnitude"]

    @classmethod
    def from_config(cls, distill, audio: AudioConfig) -> MultiResolutionSTFT:
        """The power loss's resolutions (``distill.power_*``) and ``audio.log_floor``."""
        return cls(
            distill.power_fft_sizes,
            distill.power_hop_sizes,
            distill.power_win_lengths,
            audio.log_floor,
        )
