"""KL duality of a flow: the forward KL on audio equals the reverse KL in noise space.

A teacher with a Gaussian head is an invertible map ``f: x -> z`` (see
test_theory_gaussian_teacher_is_affine_flow.py) with base noise ``N(0, I)``, and
``p_T(x) = N(f(x)) |det df/dx|``. For data ``x ~ p`` (an AR source with an exact density) the
induced noise is ``q = f_# p``, and

    KL(p || p_T) on audio  ==  KL(q || N(0, I)) in noise space

because a KL divergence does not change under an invertible map. Both sides are estimated
from the same source paths by two different computations:

- audio side: ``log p(x)`` (the source's exact density) minus the teacher's density of the
  clip, from ONE teacher pass (the head's log-density summed over steps);
- noise side: ``log q(z)`` from its definition, ``log p(f^-1(z)) + log |det d f^-1 / dz|``,
  with ``f^-1`` the sequential inverse (one teacher pass per sample) and its log-determinant
  from the autograd Jacobian, minus ``log N(z)``.

The teacher is a real :class:`WaveNetTeacher` fitted to the source by the real
maximum-likelihood objective for a few dozen steps.
"""

import math

import numpy as np
import torch

from wavedistill.config import config_from_dict
from wavedistill.data.synthetic_sources import path_log_density, stationary_source
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.likelihood import MaximumLikelihood

T = 24  # samples per path
PATHS = 8


def fitted_teacher(source, steps: int = 40) -> tuple[WaveNetTeacher, WaveNetTeacher]:
    """A tiny Gaussian-head teacher before and after ``steps`` Adam steps of maximum
    likelihood on paths of ``source``."""
    torch.manual_seed(0)
    cfg = config_from_dict(
        {
            "teacher": {
                "output": "gaussian",
                "use_mel": False,
                "layers": 2,
                "stacks": 1,
                "residual_channels": 8,
                "gate_channels": 16,
                "skip_channels": 8,
            }
        }
    )
    teacher = WaveNetTeacher.from_config(cfg)
    initial = WaveNetTeacher.from_config(cfg)
    initial.load_state_dict(teacher.state_dict())
    rng = np.random.default_rng(0)
    data = torch.tensor(
        np.stack([source.generate(1024, rng) for _ in range(8)]), dtype=torch.float32
    )
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = MaximumLikelihood().loss(teacher, {"audio": data})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return initial.eval().requires_grad_(False), teacher.eval().requires_grad_(False)


def audio_side_kl(teacher, source, x: np.ndarray) -> np.ndarray:
    """Per path ``log p(x) - log p_T(x)`` in nats: ``x (N, T)`` -> ``(N,)``."""
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        log_pt = teacher.distribution.log_density(teacher(xt), xt).double().sum(-1).numpy()
    log_p = np.array([path_log_density(path, source, "stationary") for path in x])
    return log_p - log_pt


def inverse(teacher, z: torch.Tensor) -> torch.Tensor:
    """``f^-1``: noise ``(T,)`` -> audio ``(T,)``, one teacher pass per sample."""
    x = torch.zeros(1, z.shape[-1])
    for t in range(z.shape[-1]):
        mu, log_sigma = teacher.distribution.location_scale(teacher(x))
        x = x.clone()
        x[0, t] = mu[0, t] + torch.exp(log_sigma[0, t]) * z[t]
    return x[0]


def noise_side_kl(teacher, source, x: np.ndarray) -> np.ndarray:
    """Per path ``log q(z) - log N(z)`` with ``z = f(x)``: ``x (N, T)`` -> ``(N,)``."""
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        mu, log_sigma = teacher.distribution.location_scale(teacher(xt))
        z = (xt - mu) * torch.exp(-log_sigma)  # the induced noise of every path
    out = []
    for zi in z:
        back = inverse(teacher, zi).detach().double().numpy()
        jac = torch.autograd.functional.jacobian(lambda v: inverse(teacher, v), zi)
        log_det = float(torch.linalg.slogdet(jac.double())[1])
        log_q = path_log_density(back, source, "stationary") + log_det
        log_base = float((-0.5 * zi.double().square() - 0.5 * math.log(2 * math.pi)).sum())
        out.append(log_q - log_base)
    return np.array(out)


def test_forward_kl_on_audio_equals_reverse_kl_in_noise_space():
    source = stationary_source("gaussian", 16000, 200)
    initial, teacher = fitted_teacher(source)
    x = np.stack([source.generate(T, np.random.default_rng(100 + i)) for i in range(PATHS)])
    audio_side = audio_side_kl(teacher, source, x)
    noise_side = noise_side_kl(teacher, source, x)
    # the same number per path by two computations (float32 teacher: ~1e-5 nats per path),
    # so the same estimate of the KL, far inside its Monte-Carlo error
    np.testing.assert_allclose(noise_side, audio_side, atol=1e-3)
    mean, stderr = audio_side.mean() / T, audio_side.std(ddof=1) / T / math.sqrt(PATHS)
    assert abs(noise_side.mean() / T - mean) < 1e-4 < 0.01 * stderr
    # the estimate measures the fit: fitting lowered the KL, which stays above zero
    assert audio_side_kl(initial, source, x).mean() / T > mean + 3 * stderr
    assert mean + 3 * stderr > 0
