"""Single Gaussian over 16-bit audio (ClariNet), and the closed-form Gaussian KL.

Parameters along channels: ``[mean | log_scale]``, shape ``(B, 2, T)``. Bins as in the
logistic mixture: level ``k`` covers ``[x - h, x + h]`` and the edge levels take the tails.

Numerics. The bin mass ``Phi(hi) - Phi(lo)`` is computed in float64 on ``(B, T)`` (cheap next
to the network) after reflecting the bin into the left half-line, where ``log Phi`` is exact:
``log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi)))``. When the bin is narrow in
standard units, ``w^2 (1 + z^2) < 1e-4``, that difference loses digits to cancellation, and the
midpoint rule with its second-order term, ``log phi(z) + log w + log1p((z^2 - 1) w^2 / 24)``,
is exact to ~1e-11 instead.

Scores are returned in :func:`working_dtype` of the inputs (float64 stays float64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wavedistill.models.distributions.base import (
    NUM_CLASSES_16BIT,
    OutputDistribution,
    half_bin_width,
    level_value_f64,
    log1mexp,
    snap_to_grid,
    to_level,
    working_dtype,
)

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# w^2 (1 + z^2) below this: the midpoint rule's next term, ~(w^2 z^2)^2 / 1920, is < 1e-11.
_MIDPOINT_MAX = 1e-4
_Z_MAX = 1e18


def log_ndtr(z: Tensor) -> Tensor:
    """``log Phi(z)``, exact in both tails, with finite gradients for any finite ``z``.

    The left tail goes through ``erfcx`` (``log Phi(z) = log(erfcx(-z/sqrt2)/2) - z^2/2``) so
    that neither the value nor its derivative is a difference of huge numbers.
    """
    left = z.clamp_max(-1.0)
    right = z.clamp_min(-1.0)
    log_left = torch.log(0.5 * torch.special.erfcx(-left / math.sqrt(2.0))) - 0.5 * left * left
    log_right = torch.log1p(-0.5 * torch.special.erfc(right / math.sqrt(2.0)))
    return torch.where(z < -1.0, log_left, log_right)


def gaussian_bin_log_mass(
    level: Tensor, mean: Tensor, log_scale: Tensor, num_classes: int
) -> Tensor:
    """Log-mass of a Gaussian on the bin of ``level``; all ``(B, T)``, computed in float64 and
    returned in the dtype of ``mean``."""
    h = half_bin_width(num_classes)
    inv_s = torch.exp(-log_scale.double())
    # Beyond |z| = 1e18 the log-mass is below -5e35; clamping there keeps the float32
    # result finite (the true value would overflow it).
    zc = ((level_value_f64(level, num_classes) - mean.double()) * inv_s).clamp(-_Z_MAX, _Z_MAX)
    w = 2.0 * h * inv_s
    upper, lower = zc + 0.5 * w, zc - 0.5 * w
    # Reflect so the bin lies (mostly) left of the mean, where log Phi keeps its digits.
    flip = zc > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = log_ndtr(hi)
    gap = (log_hi - log_ndtr(lo)).clamp_min(torch.finfo(torch.float64).tiny)
    by_cdf = log_hi + log1mexp(gap)
    log_w = math.log(2.0 * h) - log_scale.double()
    by_midpoint = (
        -0.5 * zc * zc
        - _LOG_SQRT_2PI
        + log_w
        # the clamp only guards the unused branch (there w may be large)
        + torch.log1p(((zc * zc - 1.0) * w * w / 24.0).clamp_min(-0.5))
    )
    interior = torch.where(w * w * (1.0 + zc * zc) < _MIDPOINT_MAX, by_midpoint, by_cdf)
    out = torch.where(level == 0, log_ndtr(upper), interior)
    out = torch.where(level == num_classes - 1, log_ndtr(-lower), out)
    return out.to(mean.dtype)


def gaussian_log_density(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Normal log-density ``-z^2/2 - log s - log sqrt(2 pi)``, broadcast over the inputs."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z * z - log_scale - _LOG_SQRT_2PI


def gaussian_kl(mu_q: Tensor, log_s_q: Tensor, mu_p: Tensor, log_s_p: Tensor) -> Tensor:
    """``KL(N(mu_q, s_q^2) || N(mu_p, s_p^2))`` in nats, elementwise with broadcasting:

    ``log s_p - log s_q + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2``.
    Scale ratios are formed in log space so that no scale is squared on its own.
    """
    log_ratio = log_s_q - log_s_p
    diff = (mu_q - mu_p) * torch.exp(-log_s_p)
    return 0.5 * (torch.exp(2.0 * log_ratio) + diff * diff - 1.0) - log_ratio


class DiscretizedGaussian(OutputDistribution):
    """One Gaussian per step over ``num_classes`` levels; log-scale floored at
    ``log_scale_min`` (teacher.gaussian_log_scale_min)."""

    num_params = 2

    def __init__(self, log_scale_min: float, num_classes: int = NUM_CLASSES_16BIT):
        self.log_scale_min = log_scale_min
        self.num_classes = num_classes

    def location_scale(
        self, params: Tensor, log_scale_min: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(B, 2, T)`` -> mean and floored log-scale, each ``(B, T)`` in
        :func:`working_dtype` of ``params``."""
        if params.shape[1] != 2:
            raise ValueError(f"Gaussian parameters need 2 channels, got {params.shape[1]}")
        floor = self.log_scale_min if log_scale_min is None else log_scale_min
        mean, log_scale = params.to(working_dtype(params)).unbind(1)
        return mean, log_scale.clamp_min(floor)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = self.location_scale(params.to(working_dtype(params, x)))
        return gaussian_bin_log_mass(
            to_level(x, self.num_classes), mean, log_scale, self.num_classes
        )

    def log_density(self, params: Tensor, x: Tensor, log_scale_min: float | None = None) -> Tensor:
        """``x`` ``(B, T)`` or ``(B, N, T)``; ``log_scale_min`` overrides the head's floor."""
        dtype = working_dtype(params, x)
        mean, log_scale = self.location_scale(params.to(dtype), log_scale_min)
        if x.dim() == 3:
            mean, log_scale = mean.unsqueeze(1), log_scale.unsqueeze(1)
        return gaussian_log_density(x.to(dtype), mean, log_scale)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Float32 draws on the grid ``(B, T)`` whatever the dtype of ``params``."""
        mean, log_scale = self.location_scale(params.float())
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        return snap_to_grid(mean + log_scale.exp() * eps, self.num_classes)

    def __repr__(self) -> str:
        return f"DiscretizedGaussian(levels={self.num_classes}, log_scale_min={self.log_scale_min})"
