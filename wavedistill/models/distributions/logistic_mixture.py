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

Precision. Scores are computed in the parameters' dtype (float64 stays float64; see
:func:`working_dtype`). The error is then a few units of that dtype's resolution relative to
``|a|``, that is to ``|log p|`` in the tails: ~1e-7 |log p| in float32, ~1e-15 |log p| in
float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from wavedistill.config import TeacherConfig
from wavedistill.models.distributions.base import (
    NUM_CLASSES_16BIT,
    OutputDistribution,
    half_bin_width,
    level_value_split,
    log1mexp,
    snap_to_grid,
    to_level,
    uniform_open,
    working_dtype,
)


def split_params(
    params: Tensor, log_scale_min: float, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(B, 3K, T)`` -> logits, means, floored log-scales, each ``(B, K, T)`` in ``dtype``
    (default: :func:`working_dtype` of ``params``)."""
    if params.shape[1] % 3 != 0:
        raise ValueError(f"mixture parameters need 3K channels, got {params.shape[1]}")
    logits, means, log_scales = params.to(dtype or working_dtype(params)).chunk(3, dim=1)
    return logits, means, log_scales.clamp_min(log_scale_min)


def logistic_bin_log_mass(
    level: Tensor, means: Tensor, log_scales: Tensor, num_classes: int
) -> Tensor:
    """Log-mass of each logistic component on the bin of ``level``.

    ``level`` ``(B, 1, T)`` int64; ``means``, ``log_scales`` ``(B, K, T)`` -> ``(B, K, T)``,
    in the dtype of ``means``.
    """
    h = half_bin_width(num_classes)
    hi, lo = level_value_split(level, num_classes, means.dtype)
    centered = (hi - means) + lo
    inv_s = torch.exp(-log_scales)
    log_sig_a = F.logsigmoid((centered + h) * inv_s)  # log CDF at the upper edge
    log_sig_neg_b = F.logsigmoid(-(centered - h) * inv_s)  # log survival at the lower edge
    log_width = math.log(2.0 * h) - log_scales  # log(a - b), never underflows
    interior = log_sig_a + log_sig_neg_b + log1mexp(log_width.exp(), log_width)
    out = torch.where(level == 0, log_sig_a, interior)
    return torch.where(level == num_classes - 1, log_sig_neg_b, out)


def discretized_mol_log_prob(
    params: Tensor,
    x: Tensor,
    num_classes: int = NUM_CLASSES_16BIT,
    log_scale_min: float = TeacherConfig.mol_log_scale_min,
) -> Tensor:
    """Log-probability in nats of audio ``x`` ``(B, T)`` under the discretized mixture
    ``params`` ``(B, 3K, T)`` -> ``(B, T)``. ``x`` is rounded to the nearest of
    ``num_classes`` levels. Computed in :func:`working_dtype` of ``params`` and ``x``."""
    logits, means, log_scales = split_params(params, log_scale_min, working_dtype(params, x))
    level = to_level(x, num_classes).unsqueeze(1)
    log_mass = logistic_bin_log_mass(level, means, log_scales, num_classes)
    return torch.logsumexp(F.log_softmax(logits, dim=1) + log_mass, dim=1)


def mol_log_density(params: Tensor, x: Tensor, log_scale_min: float) -> Tensor:
    """Continuous mixture log-density of ``x`` ``(B, T)`` or ``(B, N, T)`` (N values per step,
    all scored against the same ``params`` ``(B, 3K, T)``) -> the shape of ``x``, in
    :func:`working_dtype` of ``params`` and ``x``."""
    dtype = working_dtype(params, x)
    logits, means, log_scales = split_params(params, log_scale_min, dtype)
    values = x.to(dtype)
    out = _MixtureLogDensity.apply(
        F.log_softmax(logits, dim=1),
        means,
        log_scales,
        values if x.dim() == 3 else values.unsqueeze(1),
    )
    return out if x.dim() == 3 else out.squeeze(1)


class _MixtureLogDensity(torch.autograd.Function):
    """``log sum_k w_k logistic(x_n; mu_k, s_k)``: log weights, means and log-scales
    ``(B, K, T)``, values ``(B, N, T)`` -> ``(B, N, T)``.

    The same arithmetic as autograd of the textbook formula (``log sigmoid(z) + log sigmoid(-z)
    - log s`` per component, ``logsumexp`` over components), with the backward written out:
    ``d/dz log pdf = 1 - 2 sigmoid(z)`` and the components' responsibilities ``r`` give every
    gradient, so the ``(B, N, K, T)`` work is a few in-place passes over three saved buffers
    (``z``, ``sigmoid(z)``, ``r``) instead of autograd's dozen temporaries of that size.
    """

    @staticmethod
    def forward(ctx, log_w: Tensor, means: Tensor, log_scales: Tensor, x: Tensor) -> Tensor:
        inv_s = torch.exp(-log_scales).unsqueeze(1)  # (B, 1, K, T)
        z = (x.unsqueeze(2) - means.unsqueeze(1)).mul_(inv_s)  # (B, N, K, T)
        # log sigmoid(z) + log sigmoid(-z) = -|z| - 2 log1p(exp(-|z|)), exact for any z
        joint = z.abs().neg_()
        scratch = torch.exp(joint).log1p_()
        joint.add_(scratch, alpha=-2.0).add_((log_w - log_scales).unsqueeze(1))
        top = joint.amax(dim=2, keepdim=True)
        r = joint.sub_(top).exp_()
        total = r.sum(dim=2, keepdim=True)
        out = (top + total.log()).squeeze(2)
        if any(ctx.needs_input_grad):
            r.div_(total)  # responsibilities of the components, summing to 1 over K
            ctx.save_for_backward(z, torch.sigmoid(z, out=scratch), r, inv_s)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, sig, r, inv_s = ctx.saved_tensors
        w = r * grad.unsqueeze(2)  # g r_k
        g_log_w = w.sum(dim=1)
        w.addcmul_(w, sig, value=-2.0)  # g r_k (1 - 2 sigmoid(z_k)) = g r_k d/dz log pdf_k
        g_log_scales = -(w * z).sum(dim=1) - g_log_w  # d/d log s_k: -r_k (z_k dlogpdf/dz + 1)
        w.mul_(inv_s)
        return g_log_w, -w.sum(dim=1), g_log_scales, w.sum(dim=2)


def mol_sample(
    params: Tensor, num_classes: int, log_scale_min: float, generator: torch.Generator | None = None
) -> Tensor:
    """One draw per step from ``(B, 3K, T)``: pick a component (Gumbel-max), invert its
    logistic CDF, clamp to [-1, 1] and round to the grid -> ``(B, T)``.

    Sequential generation calls this once per sample at T = 1, where the cost is the number
    of tensor operations, so one uniform draw serves both choices and mean and log-scale are
    gathered together. Draws are float32 whatever the dtype of ``params``.
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

    def __init__(
        self, num_mixtures: int, log_scale_min: float, num_classes: int = NUM_CLASSES_16BIT
    ):
        self.num_mixtures = num_mixtures
        self.log_scale_min = log_scale_min
        self.num_classes = num_classes
        self.num_params = 3 * num_mixtures

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return discretized_mol_log_prob(params, x, self.num_classes, self.log_scale_min)

    def log_density(self, params: Tensor, x: Tensor, log_scale_min: float | None = None) -> Tensor:
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
        return (
            f"DiscretizedLogisticMixture(K={self.num_mixtures}, "
            f"levels={self.num_classes}, log_scale_min={self.log_scale_min})"
        )
