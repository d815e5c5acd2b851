"""Parallel WaveNet's entropy identity: H(p_S) = E_z[sum_t log s_t] + 2T for logistic noise.

The student maps noise to audio by ``x_t = z_t s_t + mu_t`` with ``(mu_t, s_t)`` depending on
``z_<t`` only, so ``dx/dz`` is lower-triangular with diagonal ``s_t`` and
``log p_S(x) = sum_t log p_noise(z_t) - sum_t log s_t``. Taking the expectation,
``H(p_S) = E[sum_t log s_t] + T h`` with ``h`` the entropy of the unit noise: 2 for a
logistic, ``log(2 pi e) / 2`` for a Gaussian. Checked on the real :class:`IAFStudent` and the
distillation's closed-form entropy against an entropy estimated without the identity: the
student's own sequential inverse gives ``log p_S`` of its samples.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from wavedistill.config import config_from_dict
from wavedistill.models.iaf_flow import NOISE_ENTROPY, noise_log_density
from wavedistill.models.student import IAFStudent
from wavedistill.objectives.distillation import entropy_per_step

HOP = 4
FRAMES = 3
T = FRAMES * HOP


def make_student(noise: str) -> IAFStudent:
    torch.manual_seed(0)
    cfg = config_from_dict(
        {
            "audio": {"hop_length": HOP, "n_fft": 16, "win_length": 16, "n_mels": 4},
            "student": {"flow_layers": [2, 2], "channels": 8, "dilation_cycle": 2, "noise": noise},
        }
    )
    student = IAFStudent.from_config(cfg).eval()
    for flow in student.flows:  # log-scales that move with the past: a non-trivial identity
        torch.nn.init.normal_(flow.output.weight, std=0.3)
    return student


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
def test_unit_noise_entropy_is_two_nats_for_a_logistic(noise):
    def minus_p_log_p(z):
        log_p = float(noise_log_density(torch.tensor(z, dtype=torch.float64), noise))
        return -math.exp(log_p) * log_p

    entropy, _ = integrate.quad(minus_p_log_p, -60, 60, limit=200)
    expected = 2.0 if noise == "logistic" else 0.5 * math.log(2 * math.pi * math.e)
    assert NOISE_ENTROPY[noise] == pytest.approx(expected, abs=1e-12)
    assert entropy == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
def test_log_det_of_noise_to_audio_is_the_sum_of_collapsed_log_scales(noise):
    student = make_student(noise)
    mel = torch.randn(1, 4, FRAMES)
    z = student.sample_noise((1, T), torch.Generator().manual_seed(1))
    jac = torch.autograd.functional.jacobian(lambda v: student(v[None], mel)[0][0], z[0])
    with torch.no_grad():
        _, _, log_s = student(z, mel)
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros(T, T))
    assert torch.allclose(jac.diagonal(), torch.exp(log_s[0]), rtol=1e-5)
    assert log_s.std() > 0.05  # the scales really move with the past
    log_det = float(torch.linalg.slogdet(jac.double())[1])
    assert log_det == pytest.approx(float(log_s.sum()), abs=1e-4)


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
def test_student_entropy_equals_expected_log_scales_plus_noise_entropy(noise):
    student = make_student(noise)
    n = 2000
    mel = torch.randn(1, 4, FRAMES).expand(n, -1, -1)
    z = student.sample_noise((n, T), torch.Generator().manual_seed(2))
    with torch.no_grad():
        x, _, log_s = student(z, mel)
    identity = entropy_per_step(log_s, noise).sum(-1).double().numpy()  # E[sum log s] + T h
    # without the identity: -log p_S of the samples, through the sequential inverse
    direct = -student.log_prob(x, mel).sum(-1).double().numpy()
    diff = direct - identity
    stderr = diff.std(ddof=1) / math.sqrt(n)
    assert abs(diff.mean()) < 4 * stderr
    assert stderr < 0.05 * abs(identity.mean() - T * NOISE_ENTROPY[noise])  # a sharp test
    assert np.all(np.isfinite(direct))
