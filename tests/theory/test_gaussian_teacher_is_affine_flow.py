"""A Gaussian-head teacher is exactly an affine autoregressive flow.

With ``(mu_t, sigma_t)`` the head's parameters after seeing ``x_<t``, the map
``z_t = (x_t - mu_t) / sigma_t`` sends audio to noise in one pass, and
``x_t = mu_t + sigma_t z_t`` (one step after another) sends it back: the composition is the
identity. Its Jacobian ``dz/dx`` is lower-triangular with diagonal ``1 / sigma_t``, so the
log-determinant is ``sum_t -log sigma_t`` and the change of variables
``log N(z) - sum_t log sigma_t`` is the head's own log-density of the clip. The Jacobian is
taken by autograd through the real :class:`WaveNetTeacher`.
"""

import math

import pytest
import torch

from wavedistill.config import config_from_dict
from wavedistill.models.teacher import WaveNetTeacher

T = 24


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    cfg = config_from_dict(
        {
            "teacher": {
                "output": "gaussian",
                "use_mel": False,
                "layers": 4,
                "stacks": 2,
                "residual_channels": 8,
                "gate_channels": 16,
                "skip_channels": 8,
            }
        }
    )
    model = WaveNetTeacher.from_config(cfg).eval()
    with torch.no_grad():  # scales that move with the past: a non-trivial flow
        model.head[-1].weight.mul_(5.0)
        model.head[-1].bias.copy_(torch.tensor([0.0, -2.0]))
    return model


def to_noise(teacher, x):
    """Audio ``(B, T)`` -> ``(z, log sigma)``, one teacher pass."""
    mu, log_sigma = teacher.distribution.location_scale(teacher(x))
    return (x - mu) * torch.exp(-log_sigma), log_sigma


def to_audio(teacher, z):
    """Noise ``(B, T)`` -> audio, sample by sample (step ``t`` needs ``x_<t``)."""
    x = torch.zeros_like(z)
    for t in range(z.shape[-1]):
        mu, log_sigma = teacher.distribution.location_scale(teacher(x))
        x = x.clone()
        x[:, t] = mu[:, t] + torch.exp(log_sigma[:, t]) * z[:, t]
    return x


def test_audio_to_noise_and_back_is_the_identity(teacher):
    x = 0.1 * torch.randn(3, T)
    with torch.no_grad():
        z, _ = to_noise(teacher, x)
        assert torch.allclose(to_audio(teacher, z), x, atol=1e-6)
        z2 = torch.randn(3, T)
        assert torch.allclose(to_noise(teacher, to_audio(teacher, z2))[0], z2, atol=1e-4)


def test_jacobian_is_lower_triangular_with_inverse_scales_on_the_diagonal(teacher):
    x = 0.1 * torch.randn(T)
    jac = torch.autograd.functional.jacobian(lambda v: to_noise(teacher, v[None])[0][0], x)
    with torch.no_grad():
        _, log_sigma = to_noise(teacher, x[None])
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros(T, T))
    assert torch.allclose(jac.diagonal(), torch.exp(-log_sigma[0]), rtol=1e-5)
    assert log_sigma.std() > 0.03  # the scales really vary with the past
    _, log_det = torch.linalg.slogdet(jac.double())
    assert float(log_det) == pytest.approx(float(-log_sigma.sum()), abs=1e-3)


def test_change_of_variables_equals_the_heads_log_density(teacher):
    x = 0.1 * torch.randn(4, T)
    with torch.no_grad():
        z, log_sigma = to_noise(teacher, x)
        flow = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi) - log_sigma).sum(-1)
        head = teacher.distribution.log_density(teacher(x), x).sum(-1)
    assert torch.allclose(flow, head, rtol=1e-5, atol=1e-3)
