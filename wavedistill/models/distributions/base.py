"""The output-head contract and the pieces every head shares: the audio grid and stable
log-space helpers.

A head turns the network's per-step parameters ``(B, P, T)`` into a distribution over the
next sample. It holds no weights and no state; it is built once from the teacher config.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from wavedistill.data.audio import LEVELS_16BIT
from wavedistill.errors import UserError

# 16-bit audio: level k of 65536 sits at 2k/65535 - 1; the count lives in the audio module.
NUM_CLASSES_16BIT = LEVELS_16BIT

# Below this d the series log(1 - e^-d) = log d - d/2 + d^2/24 - d^4/2880 is exact to ~1e-17
# (float64 resolution) and does not underflow when d itself does (a very wide component over
# a narrow bin).
_LOG1MEXP_SERIES_MAX = 1e-2


class OutputDistribution(ABC):
    """Per-step distribution p(x_t | x_<t, c) parameterised by the network output.

    ``num_params`` is the channel count P the network must produce. All methods take the
    parameters as ``(B, P, T)``. Scores (log-probabilities, densities, location and scale)
    are computed and returned in :func:`working_dtype`: float64 for float64 inputs, float32
    for anything narrower, since a 16-bit grid is not representable in bfloat16. Draws are
    float32 audio whatever the parameters' dtype: they are grid points.
    """

    num_params: int

    @abstractmethod
    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Discrete log-probability in nats of audio ``x`` ``(B, T)`` -> ``(B, T)``."""

    @abstractmethod
    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw per step: ``(B, P, T)`` -> float audio ``(B, T)`` in [-1, 1]."""

    def log_density(self, params: Tensor, x: Tensor, log_scale_min: float | None = None) -> Tensor:
        """Continuous log-density of ``x`` ``(B, T)`` or ``(B, N, T)`` -> same shape."""
        raise UserError(
            f"output head '{type(self).__name__}' has no continuous density; "
            "distillation needs teacher.output=mol or gaussian"
        )


# -- the audio grid ----------------------------------------------------------------------------


def half_bin_width(num_classes: int) -> float:
    """Half the spacing of ``num_classes`` levels spread evenly over [-1, 1]."""
    return 1.0 / (num_classes - 1)


def working_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a head computes in: the promotion of the floating inputs' dtypes, at least
    float32 (bfloat16 and float16 cannot resolve a 16-bit grid)."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def to_level(x: Tensor, num_classes: int) -> Tensor:
    """Nearest level index (int64) of float audio ``x``; values outside [-1, 1] clip."""
    scaled = (x.to(working_dtype(x)).clamp(-1.0, 1.0) + 1.0) * (0.5 * (num_classes - 1))
    return torch.round(scaled).long()


def from_level(level: Tensor, num_classes: int) -> Tensor:
    """Float32 audio value of a level index: ``2 k / (num_classes - 1) - 1``."""
    return level.float() * (2.0 / (num_classes - 1)) - 1.0


def level_value_f64(level: Tensor, num_classes: int) -> Tensor:
    """Float64 audio value of a level index, exact to double precision."""
    return level.double() * (2.0 / (num_classes - 1)) - 1.0


def level_value_split(
    level: Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Level value ``(2k - n + 1) / (n - 1)`` as a pair ``(hi, lo)`` in ``dtype`` (float32 or
    float64) whose sum is exact to far below ``hi``'s resolution.

    A float32 level value is off by up to 3e-8, a sizeable fraction of a 16-bit bin
    (3e-5) and of a scale at the log-scale floor (e^-14 ~ 8e-7); a float64 one by 1e-16, which
    is 1e-10 of such a scale. ``(hi - mean) + lo`` keeps that error out: ``hi - mean`` is
    exact when the two are close, which is when it matters.
    """
    den = num_classes - 1
    num = (2 * level - den).double()  # an exact integer
    hi = num / den  # correctly rounded
    # rem = (num - hi * den) / den, the rounding error of hi: split hi at 24 bits so that
    # both partial products with den (< 2^23) are exact, and so are the two subtractions.
    top = hi.float().double()
    rem = ((num - top * den) - (hi - top) * den) / den
    if dtype == torch.float64:
        return hi, rem
    hi32 = hi.float()
    return hi32, ((hi - hi32.double()) + rem).float()


def snap_to_grid(x: Tensor, num_classes: int) -> Tensor:
    """Clamp ``x`` to [-1, 1] and round it to the nearest of ``num_classes`` levels (float32).

    Called once per generated sample, so it is kept to a few in-place operations.
    """
    half_range = 0.5 * (num_classes - 1)
    level = (x.float() * half_range).add_(half_range).clamp_(0.0, num_classes - 1).round_()
    return level.mul_(1.0 / half_range).sub_(1.0)


# -- log-space helpers ---------------------------------------------------------------------------


def log1mexp(d: Tensor, log_d: Tensor | None = None) -> Tensor:
    """``log(1 - exp(-d))`` for ``d > 0``, exact across the whole range.

    Uses ``log(-expm1(-d))`` for small d and ``log1p(-exp(-d))`` for large d (Maechler, 2012).
    When ``log_d`` is given the smallest d go through a series in ``log_d``, which stays
    finite even when ``d`` underflows to zero. Every branch sees a safe input so that no
    inactive branch poisons the gradient.
    """
    ln2 = math.log(2.0)
    tiny = torch.finfo(d.dtype).tiny
    mid = torch.log(-torch.expm1(-d.clamp(tiny, ln2)))
    large = torch.log1p(-torch.exp(-d.clamp_min(ln2)))
    out = torch.where(d <= ln2, mid, large)
    if log_d is not None:
        small_d = d.clamp_max(_LOG1MEXP_SERIES_MAX)
        d2 = small_d * small_d
        series = (
            log_d.clamp_max(math.log(_LOG1MEXP_SERIES_MAX))
            - 0.5 * small_d
            + d2 / 24.0
            - d2 * d2 / 2880.0
        )
        out = torch.where(d < _LOG1MEXP_SERIES_MAX, series, out)
    return out


def gumbel_argmax(logits: Tensor, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Index of a categorical draw along ``dim`` (Gumbel-max trick), int64, ``dim`` removed."""
    u = uniform_open(logits.shape, logits, generator)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=dim)


def uniform_open(
    shape: torch.Size | tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform draws in the open interval (0, 1), float32 on ``like``'s device."""
    u = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)
    # rand can return exactly 0; the smallest normal float keeps every log finite.
    return u.clamp_min(torch.finfo(torch.float32).tiny)
