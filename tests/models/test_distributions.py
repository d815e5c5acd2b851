"""The head contract shared by every output distribution, and the μ-law categorical head.
(The mixture of logistics and the Gaussian have their own test files.)"""

import math

import pytest
import torch

from wavedistill.config import TeacherConfig
from wavedistill.data.audio import mu_law_dequantize, mu_law_quantize
from wavedistill.errors import UserError
from wavedistill.models.distributions import (
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    MuLawCategorical,
    build_distribution,
)

HEADS = ["mol", "gaussian", "categorical"]


def make_head(output):
    return build_distribution(TeacherConfig(output=output, num_mixtures=4))


def test_build_distribution_picks_the_head_and_its_floor_from_the_config():
    cfg = TeacherConfig(
        num_mixtures=5, mol_log_scale_min=-12.0, gaussian_log_scale_min=-8.0, mu_law_levels=128
    )
    mol = build_distribution(TeacherConfig(**{**vars(cfg), "output": "mol"}))
    gauss = build_distribution(TeacherConfig(**{**vars(cfg), "output": "gaussian"}))
    cat = build_distribution(TeacherConfig(**{**vars(cfg), "output": "categorical"}))
    assert isinstance(mol, DiscretizedLogisticMixture) and mol.num_params == 15
    assert mol.log_scale_min == -12.0
    assert isinstance(gauss, DiscretizedGaussian) and gauss.num_params == 2
    assert gauss.log_scale_min == -8.0
    assert isinstance(cat, MuLawCategorical) and cat.num_params == 128


def test_unknown_head_is_a_user_error_naming_the_key():
    with pytest.raises(UserError, match="teacher.output"):
        build_distribution(TeacherConfig(output="laplace"))


@pytest.mark.parametrize("output", HEADS)
def test_every_head_maps_parameters_to_per_step_log_probs_and_samples(output):
    torch.manual_seed(0)
    head = make_head(output)
    params = torch.randn(2, head.num_params, 9)
    x = head.sample(params, torch.Generator().manual_seed(0))
    assert x.shape == (2, 9) and x.dtype == torch.float32
    assert x.abs().max() <= 1.0
    logp = head.log_prob(params, x)
    assert logp.shape == (2, 9) and torch.isfinite(logp).all() and (logp <= 0).all()


@pytest.mark.parametrize("output", HEADS)
def test_one_step_at_a_time_equals_the_whole_sequence(output):
    torch.manual_seed(0)
    head = make_head(output)
    params, x = torch.randn(1, head.num_params, 6), torch.rand(1, 6) * 2 - 1
    stepwise = torch.cat(
        [head.log_prob(params[..., t : t + 1], x[:, t : t + 1]) for t in range(6)], 1
    )
    torch.testing.assert_close(stepwise, head.log_prob(params, x))


@pytest.mark.parametrize("output", HEADS)
def test_bfloat16_parameters_are_scored_in_float32(output):
    torch.manual_seed(0)
    head = make_head(output)
    params, x = torch.randn(1, head.num_params, 6), torch.rand(1, 6) * 2 - 1
    half = params.bfloat16()
    logp = head.log_prob(half, x)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, head.log_prob(half.float(), x))


@pytest.mark.parametrize("output", HEADS)
def test_float64_parameters_are_scored_in_float64(output):
    torch.manual_seed(0)
    head = make_head(output)
    params = torch.randn(1, head.num_params, 6, dtype=torch.float64)
    x = torch.rand(1, 6, dtype=torch.float64) * 2 - 1
    logp = head.log_prob(params, x)
    assert logp.dtype == torch.float64
    # the float32 answer differs from it by float32 rounding, not by less
    assert (logp - head.log_prob(params.float(), x.float())).abs().max() > 1e-12
    if output != "categorical":
        assert head.log_density(params, x).dtype == torch.float64
        assert all(p.dtype == torch.float64 for p in head.location_scale(params))
    x = head.sample(params, torch.Generator().manual_seed(0))  # draws stay float32 audio
    assert x.dtype == torch.float32


def test_categorical_float64_log_prob_is_the_float64_log_softmax():
    torch.manual_seed(0)
    params = torch.randn(2, 256, 11, dtype=torch.float64)
    x = torch.rand(2, 11, dtype=torch.float64) * 2 - 1
    want = torch.log_softmax(params, 1).gather(1, mu_law_quantize(x).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(
        MuLawCategorical(256).log_prob(params, x), want, rtol=1e-15, atol=1e-15
    )


@pytest.mark.parametrize("output", HEADS)
def test_sampling_is_reproducible_from_a_generator(output):
    head = make_head(output)
    params = torch.randn(1, head.num_params, 50)
    a = head.sample(params, torch.Generator().manual_seed(7))
    b = head.sample(params, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_categorical_log_prob_is_the_log_softmax_at_the_mu_law_class():
    torch.manual_seed(0)
    head = MuLawCategorical(256)
    params, x = torch.randn(2, 256, 11), torch.rand(2, 11) * 2 - 1
    want = torch.log_softmax(params, 1).gather(1, mu_law_quantize(x).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(head.log_prob(params, x), want)


def test_categorical_probabilities_over_all_class_centres_sum_to_one():
    head = MuLawCategorical(256)
    params = torch.randn(1, 256, 3).expand(256, -1, -1)
    centres = mu_law_dequantize(torch.arange(256)).unsqueeze(1).expand(256, 3)
    total = torch.logsumexp(head.log_prob(params, centres), dim=0)
    torch.testing.assert_close(total, torch.zeros(3), atol=1e-6, rtol=0)


def test_categorical_samples_are_class_centres_with_the_softmax_frequencies():
    head = MuLawCategorical(16)
    logits = torch.linspace(-2.0, 2.0, 16)
    n = 200_000
    x = head.sample(logits.view(1, 16, 1).expand(1, 16, n), torch.Generator().manual_seed(1))
    level = mu_law_quantize(x, 16).view(-1)
    torch.testing.assert_close(mu_law_dequantize(level, 16), x.view(-1))
    counts = torch.bincount(level, minlength=16).double()
    expected = n * torch.softmax(logits.double(), 0)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 15 + 5 * math.sqrt(2 * 15)


def test_categorical_head_has_no_continuous_density():
    head = MuLawCategorical(256)
    with pytest.raises(UserError, match="no continuous density"):
        head.log_density(torch.zeros(1, 256, 2), torch.zeros(1, 2))
