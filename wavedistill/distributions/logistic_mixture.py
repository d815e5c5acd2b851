"""Discretized mixture of logistics over 16-bit audio (PixelCNN++, Parallel WaveNet).

Parameters along channels: ``[logits (K) | means (K) | log_scales (K)]``, shape ``(B, 3K, T)``.
Level ``k`` of ``n`` covers ``[x - h, x + h]`` with ``x = 2k/(n-1) - 1`` and ``h = 1/(n-1)``;
the first and last levels take the whole tails, so the probabilities of all levels sum to 1.

Numerics. With ``a = (x + h - mu)/s`` and ``b = (x - h - mu)/s`` the bin mass factorises
exactly as

    sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(-(a - b)))

and ``a - b = 2h/s`` is known in log space, ``log(2h) - log s``. Every factor is evaluated
with a log-sigmoid or a :func:`log1mexp`, so the log-probability is exact to float precision
for tiny scales, bins far in either tail (where the CDF difference underflows) and wide
components (where it drops below float resolution): there the formula tends to the log pdf
at the bin centre plus the log bin width without a separate branch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from wavedistill.config import TeacherConfig
from wavedistill.distributions.base import (
    NUM_CLASSES_16BIT,
    OutputDistribution,
    half_bin_width,
    level_value_split,
    log1mexp,
    snap_to_grid,
    to_level,
    uniform_open,
)


def split_params(params: Tensor, log_scale_min: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(B, 3K, T)`` -> logits, means, floored log-scales, each ``(B, K, T)`` float32."""
    if params.shape[1] % 3 != 0:
        raise ValueError(f"mixture parameters need 3K channels, got {params.shape[1]}")
    logits, means, log_scales = params.float().chunk(3, dim=1)
    return logits, means, log_scales.clamp_min(log_scale_min)


def logistic_bin_log_mass(level: Tensor, means: Tensor, log_scales: Tensor,
                          num_classes: int) -> Tensor:
    """Log-mass of each logistic component on the bin of ``level``.

    ``level`` ``(B, 1, T)`` int64; ``means``, ``log_scales`` ``(B, K, T)`` -> ``(B, K, T)``.
    """
    h = half_bin_width(num_classes)
    hi, lo = level_value_split(level, num_classes)
    centered = (hi - means) + lo
    inv_s = torch.exp(-log_scales)
    log_sig_a = F.logsigmoid((centered + h) * inv_s)       # log CDF at the upper edge
    log_sig_neg_b = F.logsigmoid(-(centered - h) * inv_s)  # log survival at the lower edge
    log_width = math.log(2.0 * h) - log_scales              # log(a - b), never underflows
    interior = log_sig_a + log_sig_neg_b + log1mexp(log_width.exp(), log_width)
    out = torch.where(level == 0, log_sig_a, interior)
    return torch.where(level == num_classes - 1, log_sig_neg_b, out)


def discretized_mol_log_prob(params: Tensor, x: Tensor, num_classes: int = NUM_CLASSES_16BIT,
                             log_scale_min: float = TeacherConfig.mol_log_scale_min) -> Tensor:
    """Log-probability in nats of audio ``x`` ``(B, T)`` under the discretized mixture
    ``params`` ``(B, 3K, T)`` -> ``(B, T)``. ``x`` is rounded to the nearest of
    ``num_classes`` levels."""
    logits, means, log_scales = split_params(params, log_scale_min)
    level = to_level(x, num_classes).unsqueeze(1)
    log_mass = logistic_bin_log_mass(level, means, log_scales, num_classes)
    return torch.logsumexp(F.log_softmax(logits, dim=1) + log_mass, dim=1)


def logistic_log_pdf(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-density of a logistic: ``log sigmoid(z) + log sigmoid(-z) - log s``, broadcast."""
    z = (x - means) * torch.exp(-log_scales)
    return F.logsigmoid(z) + F.logsigmoid(-z) - log_scales


def mol_log_density(params: Tensor, x: Tensor, log_scale_min: float) -> Tensor:
    """Continuous mixture log-density of ``x`` ``(B, T)`` or ``(B, N, T)`` (N values per step,
    all scored against the same ``params`` ``(B, 3K, T)``) -> the shape of ``x``."""
    logits, means, log_scales = split_params(params, log_scale_min)
    log_w = F.log_softmax(logits, dim=1)
    if x.dim() == 3:  # components go on a new axis after the draws: (B, N, K, T)
        log_w, means, log_scales = (v.unsqueeze(1) for v in (log_w, means, log_scales))
    comp = logistic_log_pdf(x.float().unsqueeze(-2), means, log_scales)
    return torch.logsumexp(log_w + comp, dim=-2)


def mol_sample(params: Tensor, num_classes: int, log_scale_min: float,
               generator: torch.Generator | None = None) -> Tensor:
    """One draw per step from ``(B, 3K, T)``: pick a component (Gumbel-max), invert its
    logistic CDF, clamp to [-1, 1] and round to the grid -> ``(B, T)``.

    Sequential generation calls this once per sample at T = 1, where the cost is the number
    of tensor operations, so one uniform draw serves both choices and mean and log-scale are
    gathered together.
    """
    B, P, T = params.shape
    K = P // 3
    params = params.float().view(B, 3, K, T)
    u = uniform_open((B, K + 1, T), params, generator)
    k = torch.argmax(params[:, 0] - torch.log(-torch.log(u[:, :K])), dim=1)  # (B, T)
    index = k.view(B, 1, 1, T).expand(B, 2, 1, T)
    mean, log_scale = params[:, 1:].gather(2, index).view(B, 2, T).unbind(1)
    x = torch.addcmul(mean, log_scale.clamp_min(log_scale_min).exp(), torch.logit(u[:, K]))
    return snap_to_grid(x, num_classes)


class DiscretizedLogisticMixture(OutputDistribution):
    """K-component discretized logistic mixture over ``num_classes`` levels (16-bit)."""

    def __init__(self, num_mixtures: int, log_scale_min: float,
                 num_classes: int = NUM_CLASSES_16BIT):
        self.num_mixtures = num_mixtures
        self.log_scale_min = log_scale_min
        self.num_classes = num_classes
        self.num_params = 3 * num_mixtures

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return discretized_mol_log_prob(params, x, self.num_classes, self.log_scale_min)

    def log_density(self, params: Tensor, x: Tensor,
                    log_scale_min: float | None = None) -> Tensor:
        """``log_scale_min`` overrides the head's floor (distillation floors higher)."""
        floor = self.log_scale_min if log_scale_min is None else log_scale_min
        return mol_log_density(params, x, floor)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return mol_sample(params, self.num_classes, self.log_scale_min, generator)

    def location_scale(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log mixture weights, means and floored log-scales, each ``(B, K, T)``."""
        logits, means, log_scales = split_params(params, self.log_scale_min)
        return F.log_softmax(logits, dim=1), means, log_scales

    def __repr__(self) -> str:
        return (f"DiscretizedLogisticMixture(K={self.num_mixtures}, "
                f"levels={self.num_classes}, log_scale_min={self.log_scale_min})")
