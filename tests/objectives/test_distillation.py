"""Probability density distillation as a specification: the closed-form entropy against a Monte
Carlo estimate, the per-step Monte-Carlo cross-entropy against numerical integration, the
Gaussian closed-form KL against its Monte-Carlo estimate, a frozen teacher that still passes
gradients to the student's sample, the logged floors and terms, and refused configurations."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from conftest import tiny_config

from wavedistill.dsp.levels import loudness_gap_db
from wavedistill.errors import UserError
from wavedistill.models.distributions import DiscretizedGaussian, DiscretizedLogisticMixture
from wavedistill.models.iaf_flow import sample_noise
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.distillation import (
    Distillation,
    check_teacher_compatible,
    draw_values,
    entropy_per_step,
    gaussian_kl_per_step,
    mc_cross_entropy,
)

# smaller than the shared tiny config: the Monte Carlo checks draw many times
SMALLER = {
    "audio": {"sample_rate": 16000, "n_fft": 256, "hop_length": 64, "win_length": 256, "n_mels": 8},
    "data": {"segment_length": 512, "batch_size": 2},
    "teacher": {
        "layers": 2,
        "stacks": 1,
        "residual_channels": 4,
        "gate_channels": 8,
        "skip_channels": 4,
        "num_mixtures": 2,
    },
    "student": {"flow_layers": [2, 1], "channels": 4, "dilation_cycle": 2},
    "distill": {
        "num_draws": 8,
        "power_fft_sizes": [128, 64],
        "power_hop_sizes": [32, 16],
        "power_win_lengths": [128, 64],
    },
}


def small_config(**sections):
    """:func:`conftest.tiny_config` at this module's smaller sizes, with ``sections`` over them."""
    return tiny_config(SMALLER, **sections)


def models(cfg, seed=0):
    torch.manual_seed(seed)
    return WaveNetTeacher.from_config(cfg), IAFStudent.from_config(cfg)


def batch_for(cfg, batch=2, frames=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = frames * cfg.audio.hop_length
    t = torch.arange(T) / cfg.audio.sample_rate
    audio = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(batch, T, generator=g)
    return {
        "audio": audio,
        "mel": torch.randn(batch, cfg.audio.n_mels, frames, generator=g),
        "speaker": torch.zeros(batch, dtype=torch.long),
    }


def on_host(result):
    """``(loss, logs)`` of ``Distillation.loss`` with the logs (detached 0-dim tensors) read as
    floats, as the trainer reads them when it writes a log line."""
    loss, logs = result
    return loss, {k: float(v) for k, v in logs.items()}


def assert_within(estimate: torch.Tensor, expected: float, sigmas: float = 4.0) -> None:
    """The mean of ``estimate`` equals ``expected`` within ``sigmas`` standard errors."""
    estimate = estimate.detach()
    stderr = float(estimate.std() / math.sqrt(estimate.numel()))
    assert abs(float(estimate.mean()) - expected) < sigmas * stderr, (
        float(estimate.mean()),
        expected,
        stderr,
    )


# -- the estimators ------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
def test_closed_form_entropy_equals_monte_carlo_negative_log_density(noise):
    # H = E[sum_t log s_tot,t] + T h against -E log q(x), q scored through the exact inverse
    cfg = small_config(
        audio={"hop_length": 16, "n_mels": 4}, student={"noise": noise, "upsample_factors": [4, 4]}
    )
    torch.manual_seed(0)
    student = IAFStudent.from_config(cfg).double()
    for flow in student.flows:
        torch.nn.init.normal_(flow.output.weight, std=0.1)
    n = 2000
    mel = torch.randn(1, 4, 1, dtype=torch.float64).expand(n, -1, -1)
    z = student.sample_noise((n, 16)).double()
    x, _, log_s_tot = student(z, mel)
    closed = entropy_per_step(log_s_tot, noise).sum(-1)  # (n,)
    neg_log_q = -student.log_prob(x, mel).sum(-1)  # (n,)
    assert_within(closed - neg_log_q, 0.0)
    assert_within(neg_log_q, float(closed.detach().mean()))


def logistic_mixture_log_pdf(v, logits, means, log_scales):
    """float64 reference: log sum_k w_k logistic(v; mu_k, s_k), v (M,) -> (M,)."""
    log_w = torch.log_softmax(logits, 0)
    u = (v[:, None] - means) / torch.exp(log_scales)
    comp = -u - 2 * torch.nn.functional.softplus(-u) - log_scales
    return torch.logsumexp(log_w + comp, dim=1)


def test_monte_carlo_cross_entropy_is_unbiased_against_numerical_integration():
    # one fixed teacher step (3-component logistic mixture) and one logistic student step
    logits = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    means = torch.tensor([-0.05, 0.02, 0.1], dtype=torch.float64)
    log_scales = torch.tensor([-3.0, -4.0, -2.5], dtype=torch.float64)
    mu_s, log_s_s = 0.03, -3.2
    grid = torch.linspace(
        mu_s - 40 * math.exp(log_s_s), mu_s + 40 * math.exp(log_s_s), 400001, dtype=torch.float64
    )
    u = (grid - mu_s) / math.exp(log_s_s)
    p_student = torch.exp(-u - 2 * torch.nn.functional.softplus(-u) - log_s_s)
    integral = float(
        -torch.trapezoid(
            p_student * logistic_mixture_log_pdf(grid, logits, means, log_scales), grid
        )
    )

    repeats, draws = 4000, 8
    head = DiscretizedLogisticMixture(3, log_scale_min=-14.0)
    params = torch.cat([logits, means, log_scales]).float()[None, :, None].expand(1, 9, repeats)
    torch.manual_seed(0)
    eps = sample_noise((1, draws, repeats), "logistic")
    mu = torch.full((1, repeats), mu_s)
    log_s = torch.full((1, repeats), log_s_s)
    ce, stderr = mc_cross_entropy(head, params, draw_values(mu, log_s, eps), -14.0)
    assert_within(ce[0].double(), integral)
    # the logged per-step standard error is the spread of the estimator across repeats
    assert float(stderr.mean()) == pytest.approx(float(ce.std()), rel=0.1)


def test_gaussian_closed_form_kl_equals_its_monte_carlo_estimate():
    head = DiscretizedGaussian(log_scale_min=-9.0)
    mu_t, log_s_t, mu_s, log_s_s = 0.05, -2.5, 0.0, -3.0
    repeats, draws = 2000, 16
    params = torch.tensor([mu_t, log_s_t])[None, :, None].expand(1, 2, repeats)
    torch.manual_seed(0)
    eps = sample_noise((1, draws, repeats), "gaussian")
    mu = torch.full((1, repeats), mu_s)
    log_s = torch.full((1, repeats), log_s_s)
    ce, _ = mc_cross_entropy(head, params, draw_values(mu, log_s, eps), -9.0)
    mc_kl = ce - entropy_per_step(log_s, "gaussian")
    kl, reg = gaussian_kl_per_step(
        mu, log_s, torch.full_like(mu, mu_t), torch.full_like(mu, log_s_t), 4.0
    )
    assert_within(mc_kl[0].double(), float(kl[0, 0]))
    assert float(reg[0, 0]) == pytest.approx(4.0 * 0.5**2)


# -- the objective -------------------------------------------------------------------------------


def test_teacher_weights_never_change_during_distillation():
    cfg = small_config()
    teacher, student = models(cfg)
    before_teacher = copy.deepcopy(teacher.state_dict())
    before_student = copy.deepcopy(student.state_dict())
    objective = Distillation(teacher, cfg)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    batch = batch_for(cfg)
    for _ in range(3):
        optimizer.zero_grad()
        loss, _ = objective.loss(student, batch)
        loss.backward()
        optimizer.step()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before_teacher[key]), key
    assert any(not torch.equal(v, before_student[k]) for k, v in student.state_dict().items())


def test_cross_entropy_gradient_reaches_the_sample_through_the_teacher():
    cfg = small_config()
    teacher, student = models(cfg)
    objective = Distillation(teacher, cfg)
    batch = batch_for(cfg)
    z = student.sample_noise(batch["audio"].shape)
    x, mu, log_s = student(z, batch["mel"])
    x = x.detach().requires_grad_(True)
    eps = sample_noise((2, 8, x.shape[-1]), "logistic")
    terms = objective.kl_terms(x, mu.detach(), log_s.detach(), batch["mel"], None, eps)
    (grad,) = torch.autograd.grad(terms.cross_entropy, x)
    assert grad.abs().sum() > 0  # through p_T(. | x_<t): the draws do not involve x


def test_loss_logs_every_term_and_weights_them():
    cfg = small_config(distill={"power_weight": 0.5, "kl_weight": 2.0})
    teacher, student = models(cfg)
    torch.manual_seed(1)
    loss, logs = on_host(Distillation(teacher, cfg).loss(student, batch_for(cfg)))
    assert {
        "kl",
        "cross_entropy",
        "entropy",
        "power",
        "contrastive",
        "loudness_gap_db",
        "ce_stderr",
        "ce_stderr_rel",
        "teacher_floor_rate",
        "student_floor_rate",
    } <= set(logs)
    assert logs["kl"] == pytest.approx(logs["cross_entropy"] - logs["entropy"], rel=1e-5)
    assert float(loss.detach()) == pytest.approx(2.0 * logs["kl"] + 0.5 * logs["power"], rel=1e-5)
    assert all(math.isfinite(v) for v in logs.values())


def test_stft_weight_adds_the_copy_synthesis_distance_it_logs():
    from wavedistill.dsp.spectral import MultiResolutionSTFT

    cfg = small_config(distill={"power_weight": 0.5, "stft_weight": 3.0})
    teacher, student = models(cfg)
    batch = batch_for(cfg)
    torch.manual_seed(1)
    loss, logs = on_host(Distillation(teacher, cfg).loss(student, batch))
    expected = (
        1.0 * logs["kl"]
        + 0.5 * logs["power"]
        + 3.0 * (logs["spectral_convergence"] + logs["log_magnitude"])
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # the logged terms are the evaluation's distance of the same student sample
    torch.manual_seed(1)
    z = sample_noise(batch["audio"].shape, cfg.student.noise)
    x, _, _ = student(z, batch["mel"], batch["speaker"])
    with torch.no_grad():
        d = MultiResolutionSTFT.from_config(cfg.distill, cfg.audio).distances(x, batch["audio"])
    assert logs["spectral_convergence"] == pytest.approx(float(d["spectral_convergence"]), rel=1e-5)


def test_mel_weight_adds_the_l1_distance_of_the_feature_functions_log_mel():
    from wavedistill.data.features import log_mel

    cfg = tiny_config(distill={"kl_weight": 0.0, "power_weight": 0.0, "mel_weight": 2.0})
    teacher, student = models(cfg)
    batch = batch_for(cfg)
    torch.manual_seed(1)
    loss, logs = on_host(Distillation(teacher, cfg).loss(student, batch))
    torch.manual_seed(1)
    z = sample_noise(batch["audio"].shape, cfg.student.noise)
    x, _, _ = student(z, batch["mel"], batch["speaker"])
    expected = (log_mel(x.detach(), cfg.audio) - log_mel(batch["audio"], cfg.audio)).abs().mean()
    assert logs["mel_l1"] == pytest.approx(float(expected), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(2.0 * float(expected), rel=1e-5)
    objective = Distillation(teacher, cfg)
    # zero for the clip itself, and its gradient reaches the student's weights
    assert float(objective.mel_l1(batch["audio"], batch["audio"])) == 0.0
    loss, _ = objective.loss(student, batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_kl_weight_zero_trains_on_spectra_without_a_teacher_pass():
    cfg = small_config(distill={"kl_weight": 0.0, "stft_weight": 1.0})
    teacher, student = models(cfg)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    torch.manual_seed(1)
    loss, logs = on_host(Distillation(teacher, cfg).loss(student, batch_for(cfg)))
    assert not calls and "kl" not in logs
    expected = logs["power"] + logs["spectral_convergence"] + logs["log_magnitude"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_contrastive_term_against_an_identical_clip_is_the_kl_itself():
    # with both clips equal, the rolled conditioning is the true one: KL' = KL, same draws
    cfg = small_config(distill={"contrastive_weight": 0.3})
    teacher, student = models(cfg)
    batch = batch_for(cfg, batch=1)
    batch = {k: torch.cat([v, v]) for k, v in batch.items()}
    torch.manual_seed(2)
    loss, logs = on_host(Distillation(teacher, cfg).loss(student, batch))
    assert logs["contrastive"] == pytest.approx(logs["kl"], rel=1e-6)
    assert float(loss.detach()) == pytest.approx(0.7 * logs["kl"] + logs["power"], rel=1e-4)


def test_gaussian_teacher_uses_the_closed_form_with_its_regulariser():
    cfg = small_config(teacher={"output": "gaussian"}, student={"noise": "gaussian"})
    teacher, student = models(cfg)
    torch.manual_seed(3)
    loss, logs = on_host(Distillation(teacher, cfg).loss(student, batch_for(cfg)))
    assert logs["ce_stderr"] == 0.0 and logs["gaussian_reg"] > 0
    assert float(loss.detach()) == pytest.approx(
        logs["kl"] + logs["gaussian_reg"] + logs["power"], rel=1e-5
    )


def test_floor_rates_report_how_often_each_floor_binds():
    cfg = small_config(distill={"teacher_log_scale_min": 50.0, "student_log_scale_min": 0.0})
    teacher, student = models(cfg)
    _, logs = on_host(Distillation(teacher, cfg).loss(student, batch_for(cfg)))
    assert logs["teacher_floor_rate"] == pytest.approx(1.0)
    assert logs["student_floor_rate"] == 1.0  # a fresh student's log s_tot is log 0.01 < 0
    cfg = small_config(distill={"teacher_log_scale_min": -50.0, "student_log_scale_min": -50.0})
    _, logs = on_host(Distillation(teacher, cfg).loss(student, batch_for(cfg)))
    assert logs["teacher_floor_rate"] == 0.0 and logs["student_floor_rate"] == 0.0


def test_validation_reports_copy_synthesis_distance_loudness_and_kl():
    cfg = small_config()
    teacher, student = models(cfg)
    objective = Distillation(teacher, cfg)
    batch = batch_for(cfg)
    result = objective.validate(student, batch)
    assert objective.valid_metric in result
    assert {"stft_distance", "loudness_gap_db", "kl", "cross_entropy", "entropy"} <= set(result)
    assert result["loudness_gap_db"] < -10  # a fresh student whispers (initial scale 0.01)
    assert objective.log_media(student, batch)["student"].shape == batch["audio"][0].shape


def test_the_student_noise_check_runs_once_per_student_and_still_refuses(monkeypatch):
    cfg = small_config()
    teacher, student = models(cfg)
    objective = Distillation(teacher, cfg)
    checked = []
    check = Distillation._check_noise
    monkeypatch.setattr(
        Distillation,
        "_check_noise",
        lambda self, model: checked.append(model) or check(self, model),
    )
    batch = batch_for(cfg)
    for _ in range(3):
        objective.loss(student, batch)
    objective.validate(student, batch)
    assert checked == [student]
    other = IAFStudent.from_config(small_config(student={"noise": "gaussian"}))
    for _ in range(2):  # a refused student is never taken as checked
        with pytest.raises(UserError, match="student.noise='logistic'"):
            objective.loss(other, batch)
    assert checked == [student, other, other]


def test_loudness_gap_of_a_gain_is_its_decibels():
    ref = batch_for(small_config())["audio"]
    for gain in (0.1, 0.5, 2.0):
        gap = loudness_gap_db(gain * ref, ref)
        torch.testing.assert_close(gap, torch.full((2,), 20 * math.log10(gain)), atol=1e-4, rtol=0)


# -- refused configurations ----------------------------------------------------------------------


def test_incompatible_teacher_names_every_differing_audio_key():
    teacher_cfg = small_config()
    student_cfg = small_config(
        audio={"sample_rate": 22050, "n_mels": 10, "hop_length": 32}, data={"segment_length": 512}
    )
    with pytest.raises(UserError) as info:
        check_teacher_compatible(teacher_cfg, student_cfg)
    message = str(info.value)
    for key in (
        "audio.sample_rate",
        "audio.n_mels",
        "audio.hop_length",
        "teacher.upsample_factors",
        "student.upsample_factors",
    ):
        assert key in message
    assert "\n" not in message
    check_teacher_compatible(teacher_cfg, teacher_cfg)  # compatible: no error


def test_gaussian_teacher_with_logistic_student_noise_is_refused():
    cfg = small_config(teacher={"output": "gaussian"})
    with pytest.raises(UserError, match="teacher.output.*student.noise"):
        check_teacher_compatible(cfg, cfg)
    teacher, _ = models(cfg)
    with pytest.raises(UserError, match="student.noise"):
        Distillation(teacher, cfg)


def test_categorical_teacher_is_refused():
    cfg = small_config(teacher={"output": "categorical", "mu_law_levels": 16})
    with pytest.raises(UserError, match="categorical"):
        check_teacher_compatible(cfg, cfg)
    teacher, _ = models(cfg)
    with pytest.raises(UserError, match="continuous density"):
        Distillation(teacher, cfg)


def test_contrastive_term_needs_two_clips_per_batch():
    cfg = small_config(distill={"contrastive_weight": 0.3}, data={"batch_size": 1})
    teacher, _ = models(cfg)
    with pytest.raises(UserError, match="data.batch_size"):
        Distillation(teacher, dataclasses.replace(cfg))


def test_segments_shorter_than_the_largest_power_fft_are_refused():
    cfg = small_config(data={"segment_length": 64})
    teacher, _ = models(cfg)
    with pytest.raises(UserError, match=r"data.segment_length \(64\).*128"):
        Distillation(teacher, cfg)
    Distillation(teacher, small_config(data={"segment_length": 64}, distill={"power_weight": 0.0}))
