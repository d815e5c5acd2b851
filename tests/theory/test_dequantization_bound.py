"""Uniform dequantization gives a lower bound on the discrete log-likelihood.

For a continuous density ``p`` and the bin ``B = [x - h, x + h]`` of a 16-bit level (width
``w = 2h``), Jensen's inequality gives

    E_{u ~ U(B)} [log p(u)] + log w  <=  log integral_B p  =  log P(level)

(and ``P`` of an edge level, which also takes a tail, is larger still). So a model's
dequantized log-likelihood (uniform noise added to 16-bit audio, scored by the continuous
density in units of one bin) never exceeds its discrete log-likelihood; the two meet when the
density is flat across the bin (gap ~ w^2 / (24 s^2)) and part when it is narrower than a bin.
Checked on the real heads, the expectation over the bin taken by Gauss-Legendre quadrature.
"""

import math

import numpy as np
import pytest
import torch

from wavedistill.models.distributions import DiscretizedGaussian, DiscretizedLogisticMixture
from wavedistill.models.distributions.base import NUM_CLASSES_16BIT, half_bin_width

H = half_bin_width(NUM_CLASSES_16BIT)
NODES, WEIGHTS = np.polynomial.legendre.leggauss(64)


def level_value(k: int) -> float:
    """The value of 16-bit level ``k``: ``2k / 65535 - 1`` (0 is not a level; 32768 is
    half a bin above it)."""
    return 2.0 * k / (NUM_CLASSES_16BIT - 1) - 1.0


def heads_and_params(n: int, lowest_log_scale: float, seed: int = 0):
    """Both continuous heads with ``n`` random parameter sets each: log-scales from
    ``lowest_log_scale`` to far above the bin width (log w ~ -10.4), means within a few bins
    of 0."""
    g = torch.Generator().manual_seed(seed)
    log_scale = torch.linspace(lowest_log_scale, -2.0, n)
    offset = (torch.rand(n, generator=g) - 0.5) * 8 * H
    gaussian = torch.stack([offset, log_scale])[None]  # (1, 2, n)
    K = 3
    mixture = torch.cat(
        [
            torch.randn(K, n, generator=g),
            offset + (torch.rand(K, n, generator=g) - 0.5) * 4 * H,
            log_scale + torch.rand(K, n, generator=g),
        ]
    )[None]  # (1, 3K, n)
    return [(DiscretizedGaussian(-16.0), gaussian), (DiscretizedLogisticMixture(K, -16.0), mixture)]


def dequantized_log_density(head, params, centre):
    """``E_u[log p(u)] + log w`` over the bins centred on ``centre`` (B, n), by quadrature."""
    points = centre.double()[:, None, :] + H * torch.tensor(NODES)[None, :, None]
    log_p = head.log_density(params, points.float()).double()  # (B, nodes, n)
    weights = torch.tensor(WEIGHTS / 2.0, dtype=torch.float64)[None, :, None]
    return (weights * log_p).sum(1) + math.log(2 * H)


# Far from 0 a float32 value resolves a bin only to ~0.2 %, too coarse for the quadrature
# under a density narrower than a bin: there the scales start at the bin width.
@pytest.mark.parametrize(
    ("level", "lowest_log_scale"),
    [(32768, -14.0), (40960, -10.0), (0, -10.0), (65535, -10.0)],
    ids=["next to 0", "interior", "low edge", "high edge"],
)
def test_dequantized_log_density_never_exceeds_the_discrete_log_probability(
    level, lowest_log_scale
):
    n, value = 64, level_value(level)
    for head, params in heads_and_params(n, lowest_log_scale):
        centred = params.clone()
        means = slice(0, 1) if isinstance(head, DiscretizedGaussian) else slice(3, 6)
        centred[:, means] += value
        x = torch.full((1, n), value)
        discrete = head.log_prob(centred, x).double()
        dequantized = dequantized_log_density(head, centred, x)
        # float32 densities (~1e-6 relative) bound the precision of the comparison
        assert torch.all(dequantized <= discrete + 1e-5), head
        if lowest_log_scale < math.log(H):  # densities narrower than a bin: far from equality
            assert torch.any(dequantized < discrete - 0.1), head


def test_the_bound_is_tight_for_wide_densities_and_loose_for_peaked_ones():
    head = DiscretizedGaussian(-16.0)
    log_scale = torch.tensor([-2.0, -6.0, -12.0, -14.0])
    x = torch.full((1, 4), level_value(32768))
    params = torch.stack([x[0], log_scale])[None]
    gap = (head.log_prob(params, x).double() - dequantized_log_density(head, params, x))[0]
    w = 2 * H
    # wide: the gap is the curvature term w^2 / (24 s^2), far below float32 resolution
    assert torch.all(gap[:2].abs() < 1e-5)
    # peaked: log P of the bin (most of the mass) against the mean log-density of a Gaussian
    # narrower than the bin, -log(s sqrt(2 pi)) - w^2 / (24 s^2), in units of one bin
    s = torch.exp(log_scale[2:]).double()
    log_mass = torch.log(torch.special.erf(H / (s * math.sqrt(2.0))))
    expected = log_mass + torch.log(s * math.sqrt(2 * math.pi) / w) + w**2 / (24 * s**2)
    assert torch.allclose(gap[2:], expected, rtol=1e-4)
    assert torch.all(gap[2:] > 0.3)
