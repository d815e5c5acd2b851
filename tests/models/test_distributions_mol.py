"""Discretized mixture of logistics: a proper distribution over the grid, equal to a
high-precision brute-force computation in every regime, finite everywhere, and its sampler
and continuous density agree with it."""

import math

import mpmath
import pytest
import torch

from wavedistill.models.distributions import DiscretizedLogisticMixture, discretized_mol_log_prob
from wavedistill.models.distributions.base import from_level

FLOOR = -14.0


def mixture_params(logits, means, log_scales):
    """Per-component lists -> params (1, 3K, 1)."""
    flat = list(logits) + list(means) + list(log_scales)
    return torch.tensor(flat, dtype=torch.float32).view(1, -1, 1)


def all_levels_log_prob(params, num_classes, log_scale_min=FLOOR):
    """log P(level) for every level at every step of params (1, 3K, T) -> (levels, T)."""
    T = params.shape[-1]
    levels = torch.arange(num_classes)
    x = from_level(levels, num_classes).unsqueeze(1).expand(num_classes, T)
    return discretized_mol_log_prob(
        params.expand(num_classes, -1, -1), x, num_classes, log_scale_min
    )


def random_params(K, T, seed, log_scale_range=(-14.0, 0.0)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, K, T, generator=g) * 2
    means = torch.rand(1, K, T, generator=g) * 2.4 - 1.2
    lo, hi = log_scale_range
    log_scales = torch.rand(1, K, T, generator=g) * (hi - lo) + lo
    return torch.cat([logits, means, log_scales], dim=1)


def mp_truth(params, level, num_classes, log_scale_min=FLOOR):
    """log P(level) from the float32 parameters, evaluated with 80 significant digits."""
    mpmath.mp.dps = 80
    K = params.shape[1] // 3
    p = params[0, :, 0].tolist()
    logits, means, log_scales = p[:K], p[K : 2 * K], p[2 * K :]
    x = mpmath.mpf(2 * level) / (num_classes - 1) - 1  # the exact level value
    h = mpmath.mpf(1) / (num_classes - 1)
    norm = sum(mpmath.exp(mpmath.mpf(v)) for v in logits)

    def mass(mean, s):
        # Mass above a point is 1 - CDF; differences are taken on the side of the mean where
        # both terms are small, so 80 digits suffice even in the far tails.
        sf = lambda t: 1 / (1 + mpmath.exp((t - mean) / s))  # noqa: E731
        cdf = lambda t: 1 / (1 + mpmath.exp(-(t - mean) / s))  # noqa: E731
        if x > mean:
            return sf(x - h) - (0 if level == num_classes - 1 else sf(x + h))
        return (1 if level == num_classes - 1 else cdf(x + h)) - (0 if level == 0 else cdf(x - h))

    total = mpmath.mpf(0)
    for w, mean, ls in zip(logits, means, log_scales, strict=True):
        s = mpmath.exp(mpmath.mpf(max(ls, log_scale_min)))
        total += mpmath.exp(mpmath.mpf(w)) / norm * mass(mpmath.mpf(mean), s)
    return float(mpmath.log(total))


def test_probabilities_over_all_256_levels_sum_to_one():
    params = random_params(K=4, T=16, seed=0)
    total = torch.logsumexp(all_levels_log_prob(params, 256), dim=0)
    torch.testing.assert_close(total, torch.zeros(16), atol=2e-6, rtol=0)


def test_probabilities_over_all_65536_levels_sum_to_one():
    params = random_params(K=3, T=3, seed=1)
    total = torch.logsumexp(all_levels_log_prob(params, 65536), dim=0)
    torch.testing.assert_close(total, torch.zeros(3), atol=2e-6, rtol=0)


def test_probabilities_sum_to_one_at_the_scale_floor_between_grid_points():
    # At s = e^-14 a bin is ~40 scales wide and float32 level values are off by up to 0.04
    # scales; the level values must be carried exactly for the bins to tile the line.
    params = torch.tensor([[[0.0, 0.0, 0.0], [0.3, -0.999, 0.1234567], [FLOOR] * 3]])
    total = torch.logsumexp(all_levels_log_prob(params, 65536), dim=0)
    torch.testing.assert_close(total, torch.zeros(3), atol=2e-7, rtol=0)


# (logits, means, log_scales, level): edge bins, the floor, far tails, very wide components
BRUTE_FORCE_CASES = [
    ([0.0], [0.0], [-3.0], 32768),  # bin near the mode
    ([0.0], [0.3], [-14.0], 42598),  # tiny scale, bin at the mode
    ([0.0], [0.3], [-20.0], 42597),  # below the floor: acts as the floor
    ([0.0], [0.5], [-14.0], 3000),  # tiny scale, far left tail: CDFs underflow
    ([0.0], [-0.5], [-14.0], 60000),  # tiny scale, far right tail: CDFs hit 1
    ([0.0], [0.9], [-6.0], 0),  # first bin takes the left tail
    ([0.0], [-0.9], [-6.0], 65535),  # last bin takes the right tail
    ([0.0], [0.999], [-14.0], 65535),  # last bin, mode inside it
    ([0.0], [-1.0], [-14.0], 0),  # first bin, mode on its centre
    ([0.0], [0.2], [4.0], 100),  # very wide: difference below float eps
    ([0.0], [0.2], [40.0], 33000),  # absurdly wide: width underflows
    ([0.0], [0.3], [-14.0], 45000),  # tiny scale, near right tail
    ([1.0, -2.0, 0.5], [-0.7, 0.1, 0.8], [-9.0, -12.0, -2.0], 39322),
    ([3.0, 0.0], [0.0, 0.0], [-14.0, -1.0], 32768),
    ([0.0, 0.0], [-0.99, 0.99], [-13.0, -13.0], 1),  # next to an edge, mass far away
]


@pytest.mark.parametrize("logits, means, log_scales, level", BRUTE_FORCE_CASES)
def test_log_prob_equals_high_precision_brute_force(logits, means, log_scales, level):
    params = mixture_params(logits, means, log_scales)
    x = from_level(torch.tensor([[level]]), 65536)
    got = discretized_mol_log_prob(params, x, 65536, FLOOR).item()
    want = mp_truth(params, level, 65536)
    assert math.isfinite(got)
    assert got == pytest.approx(want, rel=2e-6, abs=2e-5)


def test_wide_component_tends_to_pdf_at_centre_times_bin_width():
    # When the bin is a tiny fraction of the scale the mass is pdf(centre) * width to
    # float precision; the exact factorisation must reach that limit smoothly.
    mean, log_s, level = 0.1, 2.0, 20000
    params = mixture_params([0.0], [mean], [log_s])
    x = from_level(torch.tensor([[level]]), 65536)
    z = (x.double().item() - mean) / math.exp(log_s)
    log_pdf = -z - log_s - 2 * math.log1p(math.exp(-z))
    want = log_pdf + math.log(2 / 65535)
    assert discretized_mol_log_prob(params, x).item() == pytest.approx(want, abs=1e-6)


def test_log_prob_and_gradients_are_finite_for_extreme_parameters():
    torch.manual_seed(0)
    K, T = 3, 60
    logits = torch.tensor([-1e4, 0.0, 1e4]).repeat(T // 3).view(1, 1, T).expand(1, K, T)
    means = torch.tensor([-1e6, -1.0, 1.0, 0.0, 1e6, 1e30]).repeat(T // 6).view(1, 1, T)
    log_scales = torch.tensor([-1e4, -14.0, 0.0, 30.0, 100.0]).repeat(T // 5).view(1, 1, T)
    params = torch.cat([logits, means.expand(1, K, T), log_scales.expand(1, K, T)], dim=1)
    params = (params + 0.01 * torch.randn_like(params)).requires_grad_(True)
    x = torch.tensor([-1.0, 1.0, 0.0, from_level(torch.tensor(1), 65536).item()]).repeat(T // 4)
    logp = discretized_mol_log_prob(params, x.view(1, T))
    assert torch.isfinite(logp).all() and (logp <= 1e-6).all()
    logp.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_log_scales_below_the_floor_act_as_the_floor():
    params = mixture_params([0.0, 1.0], [0.1, -0.2], [-30.0, -14.0])
    floored = mixture_params([0.0, 1.0], [0.1, -0.2], [-14.0, -14.0])
    x = torch.tensor([[0.1]])
    head = DiscretizedLogisticMixture(2, log_scale_min=FLOOR)
    assert head.log_prob(params, x).item() == head.log_prob(floored, x).item()
    _, _, log_s = head.location_scale(params)
    assert log_s.min().item() == FLOOR


def test_sample_histogram_matches_log_prob():
    torch.manual_seed(0)
    head = DiscretizedLogisticMixture(3, log_scale_min=FLOOR)
    params = mixture_params([0.5, 0.0, -0.5], [-0.5, 0.1, 0.6], [-2.5, -3.0, -1.5])
    n, cells = 100_000, 64
    draws = head.sample(params.expand(1, -1, n), torch.Generator().manual_seed(3))
    assert draws.shape == (1, n) and draws.abs().max() <= 1
    counts = torch.bincount(
        ((draws + 1) / 2 * 65535).round().long().view(-1) // 1024, minlength=cells
    ).double()
    probs = all_levels_log_prob(params, 65536)[:, 0].double().exp().view(cells, -1).sum(1)
    expected = n * probs
    chi2 = ((counts - expected) ** 2 / expected.clamp_min(1e-9))[expected > 5].sum().item()
    assert chi2 < 63 + 5 * math.sqrt(2 * 63)  # df = 63; five standard deviations


def test_samples_lie_on_the_grid_and_clip_to_the_edges():
    head = DiscretizedLogisticMixture(1, log_scale_min=FLOOR, num_classes=256)
    params = mixture_params([0.0], [0.99], [-1.0]).expand(1, -1, 5000)
    x = head.sample(params, torch.Generator().manual_seed(0))
    level = (x + 1) / 2 * 255
    torch.testing.assert_close(level, level.round(), atol=1e-4, rtol=0)
    assert x.max().item() == 1.0 and x.min().item() >= -1.0


def test_continuous_density_integrates_to_one():
    head = DiscretizedLogisticMixture(3, log_scale_min=FLOOR)
    params = mixture_params([0.3, -1.0, 0.0], [-0.4, 0.2, 0.5], [-2.0, -3.5, -1.0])
    grid = torch.linspace(-30.0, 30.0, 600_001)
    dens = head.log_density(params.expand(1, -1, grid.numel()), grid.view(1, -1)).double().exp()
    integral = torch.trapezoid(dens.view(-1), grid.double()).item()
    assert integral == pytest.approx(1.0, abs=1e-5)


def test_log_density_broadcasts_draws_against_parameters():
    torch.manual_seed(0)
    head = DiscretizedLogisticMixture(4, log_scale_min=FLOOR)
    params = random_params(K=4, T=7, seed=2).expand(2, -1, -1).contiguous()
    draws = torch.randn(2, 5, 7) * 0.3
    batched = head.log_density(params, draws)
    looped = torch.stack([head.log_density(params, draws[:, n]) for n in range(5)], dim=1)
    assert batched.shape == (2, 5, 7)
    torch.testing.assert_close(batched, looped)


def test_log_density_floor_can_be_raised_by_the_caller():
    head = DiscretizedLogisticMixture(1, log_scale_min=FLOOR)
    params = mixture_params([0.0], [0.0], [-12.0])
    x = torch.zeros(1, 1)
    assert head.log_density(params, x).item() == pytest.approx(12.0 - 2 * math.log(2), abs=1e-5)
    assert head.log_density(params, x, log_scale_min=-7.0).item() == pytest.approx(
        7.0 - 2 * math.log(2), abs=1e-5
    )


# -- precision in float32 and float64 against a 50-digit reference -------------------------------


def precision_fixture(K=3, N=65536):
    """float64 columns of params ``(1, 3K, T)`` and their levels ``(T,)`` in three groups:
    tiny scales (log-scales from 2 below the floor to 0.5 above it) with all means within a
    bin of each other and the level 150 to 30000 bins away (log p from about -5e3 to -1e6);
    ordinary parameters at random levels; the two edge bins, which take the CDF tails, near
    and far from the mass; wide components; and a bin that holds nearly all the mass
    (log p ~ -1e-7)."""
    g = torch.Generator().manual_seed(11)

    def rand(n=K):  # float64 draws: most are not float32 numbers
        return torch.rand(n, generator=g, dtype=torch.float64)

    def randn(n=K):
        return torch.randn(n, generator=g, dtype=torch.float64)

    cols, levels = [], []
    for _ in range(60):  # far tails of tiny components
        centre = float(rand(1)) * 1.6 - 0.8
        means = centre + (rand() - 0.5) * 2 / (N - 1)
        bins = int(torch.randint(150, 30000, (), generator=g)) * (1 if len(cols) % 2 else -1)
        cols.append(torch.cat([randn() * 2, means, FLOOR - 2.0 + rand() * 2.5]))
        levels.append(min(max(round((centre + 1) * (N - 1) / 2) + bins, 0), N - 1))
    for _ in range(60):  # ordinary parameters
        cols.append(torch.cat([randn() * 2, rand() * 2.4 - 1.2, rand() * 14 + FLOOR]))
        levels.append(int(torch.randint(0, N, (), generator=g)))
    for mean, log_s in [
        (0.9, -6.0),
        (-0.9, -6.0),
        (0.999, FLOOR),
        (-1.0, FLOOR),
        (0.5, FLOOR),
        (-0.5, FLOOR),
        (0.0, 0.5),
        (-0.99998, -13.5),
    ]:
        for level in (0, N - 1):  # edge bins
            cols.append(
                torch.tensor(
                    [0.0, 1.0, -1.0, mean, mean + 0.3, mean - 0.3, log_s, log_s + 1.0, log_s + 2.0],
                    dtype=torch.float64,
                )
            )
            levels.append(level)
    for log_s in (-5.8, -5.78, -3.0, 0.0, 4.0):  # wide: each side of the series switch
        for level in (20000, 40000):  # in base.log1mexp, at 2h/s = 1e-2, and beyond
            cols.append(
                torch.tensor(
                    [0.0, 1.0, -1.0, 0.21, 0.2, 0.4, log_s, log_s, log_s], dtype=torch.float64
                )
            )
            levels.append(level)
    for mean in (0.3, 0.3 + 0.4 / (N - 1)):  # one bin holds nearly all the mass
        cols.append(
            torch.tensor(
                [30.0, 0.0, 0.0, mean, mean, mean, FLOOR, FLOOR, FLOOR], dtype=torch.float64
            )
        )
        levels.append(round((mean + 1) * (N - 1) / 2))
    return torch.stack(cols, dim=1).unsqueeze(0), torch.tensor(levels)


def mp_log_prob(column, level, N=65536, floor=FLOOR):
    """log sum_k pi_k (sigmoid(a_k) - sigmoid(b_k)) with 50 digits from the parameters exactly
    as given; the edge bins use the CDF / survival function. Right of a component's mean the
    difference is taken between survival functions, so both terms are small and no digit is
    lost."""
    mpmath.mp.dps = 50
    K = len(column) // 3
    logits, means, log_scales = (column[i * K : (i + 1) * K] for i in range(3))
    x = mpmath.mpf(2 * level - (N - 1)) / (N - 1)  # the exact level value
    h = mpmath.mpf(1) / (N - 1)
    sig = lambda t: 1 / (1 + mpmath.exp(-t))  # noqa: E731
    norm = sum(mpmath.exp(mpmath.mpf(v)) for v in logits)
    total = mpmath.mpf(0)
    for w, mean, ls in zip(logits, means, log_scales, strict=True):
        s = mpmath.exp(mpmath.mpf(max(ls, floor)))
        a, b = (x + h - mpmath.mpf(mean)) / s, (x - h - mpmath.mpf(mean)) / s
        if level == 0:
            mass = sig(a)
        elif level == N - 1:
            mass = sig(-b)
        elif a + b > 0:
            mass = sig(-b) - sig(-a)
        else:
            mass = sig(a) - sig(b)
        total += mpmath.exp(mpmath.mpf(w)) / norm * mass
    return float(mpmath.log(total))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_keeps_the_input_dtype_and_its_precision(dtype):
    params, levels = precision_fixture()
    params = params.to(dtype)
    x = (levels.double() * (2 / 65535) - 1).to(dtype).view(1, -1)
    got = discretized_mol_log_prob(params, x, 65536, FLOOR)
    assert got.dtype == dtype
    want = torch.tensor(
        [mp_log_prob(params[0, :, t].tolist(), int(levels[t])) for t in range(levels.numel())],
        dtype=torch.float64,
    )
    assert want.min() < -1e6 and want.max() > -1e-6  # the fixture spans the far tails and ~0
    err = (got[0].double() - want).abs()
    # measured: float64 within 2e-15 |log p| (+1e-22 where log p ~ 0); float32 within
    # ~1e-7 |log p| in the far tails and 4e-5 elsewhere
    if dtype == torch.float64:
        bound = 1e-14 * want.abs() + 1e-18
    else:
        bound = 1e-2 + 1e-5 * want.abs()
    assert (err <= bound).all(), f"worst {float((err / bound).max()):.3g} of the bound"
