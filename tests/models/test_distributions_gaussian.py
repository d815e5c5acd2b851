"""Discretized Gaussian (ClariNet) and the Gaussian KL: a proper distribution over the grid,
equal to a high-precision brute force in every regime (including both sides of the switch to
the midpoint rule), finite everywhere, and the closed-form KL equals its Monte-Carlo value."""

import math

import mpmath
import pytest
import torch

from wavedistill.models.distributions import DiscretizedGaussian, gaussian_kl
from wavedistill.models.distributions.base import from_level
from wavedistill.models.distributions.gaussian import log_ndtr

FLOOR = -9.0
# float64 scores: the midpoint rule's dropped term is below 5e-12 where it is used
TOL64 = 1e-11


def gauss_params(mean, log_scale, T=1):
    return torch.tensor([mean, log_scale], dtype=torch.float32).view(1, 2, 1).expand(1, 2, T)


def all_levels_log_prob(head, params):
    """log P(level) for every level of ``head`` at every step of params (1, 2, T)."""
    n, T = head.num_classes, params.shape[-1]
    x = from_level(torch.arange(n), n).unsqueeze(1).expand(n, T)
    return head.log_prob(params.expand(n, -1, -1), x)


def mp_truth(mean, log_scale, level, num_classes=65536, floor=FLOOR, dtype=torch.float32):
    """log P(level) from the parameters rounded to ``dtype`` with 80 digits (tail differences
    taken on the side of the mean where both terms are small)."""
    mpmath.mp.dps = 80
    mean, log_scale = (float(torch.tensor(v, dtype=dtype)) for v in (mean, log_scale))
    x = mpmath.mpf(2 * level) / (num_classes - 1) - 1  # the exact level value
    h = mpmath.mpf(1) / (num_classes - 1)
    s = mpmath.exp(mpmath.mpf(max(log_scale, floor)))
    mu = mpmath.mpf(mean)
    first, last = level == 0, level == num_classes - 1
    if x > mu:  # survival function differences
        sf = lambda t: mpmath.ncdf(-(t - mu) / s)  # noqa: E731
        mass = sf(x - h) - (0 if last else sf(x + h))
    else:
        cdf = lambda t: mpmath.ncdf((t - mu) / s)  # noqa: E731
        mass = (1 if last else cdf(x + h)) - (0 if first else cdf(x - h))
    return float(mpmath.log(mass))


def test_probabilities_over_all_256_levels_sum_to_one():
    head = DiscretizedGaussian(FLOOR, num_classes=256)
    params = torch.stack([torch.linspace(-1.1, 1.1, 12), torch.linspace(-9, 1, 12)]).unsqueeze(0)
    total = torch.logsumexp(all_levels_log_prob(head, params), dim=0)
    torch.testing.assert_close(total, torch.zeros(12), atol=2e-6, rtol=0)


def test_probabilities_over_all_65536_levels_sum_to_one():
    head = DiscretizedGaussian(FLOOR)
    params = torch.tensor([[[0.3, -0.999, 0.0], [-9.0, -4.0, 2.0]]])  # the floor, off-grid
    total = torch.logsumexp(all_levels_log_prob(head, params), dim=0)
    torch.testing.assert_close(total, torch.zeros(3), atol=1e-6, rtol=0)


# (mean, log_scale, level): the mode, the floor, far tails, edges, wide scales, and the
# neighbourhood of the midpoint-rule switch w^2 (1 + z^2) = 1e-4
BRUTE_FORCE_CASES = [
    (0.0, -3.0, 32768),
    (0.3, -9.0, 42598),  # the floor, bin at the mode
    (0.3, -12.0, 42598),  # below the floor: acts as the floor
    (0.3, -9.0, 43000),  # tail: a few hundred standard deviations out
    (0.5, -9.0, 3000),  # far left tail: CDFs underflow
    (-0.5, -9.0, 60000),  # far right tail: CDFs round to 1
    (0.9, -5.0, 0),  # first bin takes the left tail
    (-0.9, -5.0, 65535),  # last bin takes the right tail
    (1.0, -9.0, 65535),  # last bin, mode on its centre
    (0.2, 2.0, 100),  # wide: midpoint rule
    (0.2, 40.0, 33000),  # absurdly wide
    (0.0, -5.8, 32868),  # w^2 (1 + z^2) just above 1e-4: CDF difference
    (0.0, -5.8, 32848),  # just below: midpoint rule
    (0.0, -4.0, 32768),  # switch region near the mode
    (0.0, -4.7, 32768),
]


@pytest.mark.parametrize("mean, log_scale, level", BRUTE_FORCE_CASES)
def test_log_prob_equals_high_precision_brute_force(mean, log_scale, level):
    head = DiscretizedGaussian(FLOOR)
    x = from_level(torch.tensor([[level]]), 65536)
    got = head.log_prob(gauss_params(mean, log_scale), x).item()
    want = mp_truth(mean, log_scale, level)
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=2e-6, abs=2e-6)


@pytest.mark.parametrize("mean, log_scale, level", BRUTE_FORCE_CASES)
def test_float64_parameters_are_scored_in_float64(mean, log_scale, level):
    # 0.1 / 65535 off the case's mean: a float64 number that float32 would round
    mean = mean + 0.1 / 65535
    params = torch.tensor([mean, log_scale], dtype=torch.float64).view(1, 2, 1)
    x = from_level(torch.tensor([[level]]), 65536).double()
    got = DiscretizedGaussian(FLOOR).log_prob(params, x)
    want = mp_truth(mean, log_scale, level, dtype=torch.float64)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=TOL64, abs=TOL64)


def test_log_ndtr_is_exact_in_both_tails():
    mpmath.mp.dps = 50
    z = torch.tensor(
        [-1e4, -300.0, -38.0, -5.0, -1.0, -0.5, 0.0, 3.0, 9.0, 30.0], dtype=torch.float64
    )
    # right of 0 through log1p(-Q(z)): Phi(30) = 1 - 5e-198 is 1 at any sane precision
    want = torch.tensor(
        [
            float(mpmath.log(mpmath.ncdf(v)) if v < 0 else mpmath.log1p(-mpmath.ncdf(-v)))
            for v in z.tolist()
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(log_ndtr(z), want, rtol=1e-12, atol=1e-300)


def test_log_prob_and_gradients_are_finite_for_extreme_parameters():
    torch.manual_seed(0)
    T = 60
    means = torch.tensor([-1e6, -1.0, 1.0, 0.0, 1e6, 1e30]).repeat(T // 6)
    log_scales = torch.tensor([-1e4, -9.0, 0.0, 30.0, 100.0]).repeat(T // 5)
    params = torch.stack([means, log_scales]).unsqueeze(0)
    params = (params + 0.01 * torch.randn_like(params)).requires_grad_(True)
    x = torch.tensor([-1.0, 1.0, 0.0, from_level(torch.tensor(1), 65536).item()]).repeat(T // 4)
    logp = DiscretizedGaussian(FLOOR).log_prob(params, x.view(1, T))
    assert torch.isfinite(logp).all() and (logp <= 1e-6).all()
    logp.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_sample_histogram_matches_log_prob():
    head = DiscretizedGaussian(FLOOR, num_classes=256)
    params = gauss_params(0.1, -1.5, T=100_000)
    draws = head.sample(params, torch.Generator().manual_seed(1))
    counts = torch.bincount(((draws + 1) / 2 * 255).round().long().view(-1), minlength=256)
    expected = 100_000 * all_levels_log_prob(head, params[..., :1])[:, 0].double().exp()
    keep = expected > 5
    chi2 = ((counts.double() - expected) ** 2 / expected)[keep].sum().item()
    df = int(keep.sum()) - 1
    assert chi2 < df + 5 * math.sqrt(2 * df)


def test_continuous_density_matches_the_normal_and_broadcasts_draws():
    torch.manual_seed(0)
    head = DiscretizedGaussian(FLOOR)
    params = torch.stack([torch.randn(2, 7) * 0.3, torch.rand(2, 7) * 4 - 6], dim=1)
    draws = torch.randn(2, 5, 7) * 0.1
    got = head.log_density(params, draws)
    mean, log_s = params[:, 0], params[:, 1]
    want = torch.distributions.Normal(mean.unsqueeze(1), log_s.exp().unsqueeze(1)).log_prob(draws)
    assert got.shape == (2, 5, 7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu_q, log_s_q = torch.tensor([0.3, -1.0, 0.0]), torch.tensor([-1.0, 0.5, -3.0])
    mu_p, log_s_p = torch.tensor([0.0, -0.2, 0.01]), torch.tensor([-0.5, 0.0, -2.0])
    x = mu_q.double() + log_s_q.double().exp() * torch.randn(
        400_000, 3, generator=g, dtype=torch.float64
    )
    q = torch.distributions.Normal(mu_q.double(), log_s_q.double().exp())
    p = torch.distributions.Normal(mu_p.double(), log_s_p.double().exp())
    log_ratio = q.log_prob(x) - p.log_prob(x)
    mc, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(x.shape[0])
    closed = gaussian_kl(mu_q, log_s_q, mu_p, log_s_p).double()
    assert ((closed - mc).abs() < 5 * stderr).all()


def test_gaussian_kl_is_zero_for_equal_and_positive_for_different_gaussians():
    mu, log_s = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(gaussian_kl(mu, log_s, mu, log_s), torch.zeros(10))
    assert (gaussian_kl(mu, log_s, mu + 0.1, log_s - 0.2) > 0).all()
