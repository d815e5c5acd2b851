"""The fast distillation step computes what the textbook formulas compute: the conditioned gate
(one custom autograd function, tanh through sigmoid) and the mixture's Monte-Carlo log-density
(backward written out) against plain autograd of the formulas, on their own and through a whole
distillation step (loss and every student gradient, same batch and seed)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from wavedistill.models import networks
from wavedistill.models.distributions import logistic_mixture
from wavedistill.models.distributions.logistic_mixture import mol_log_density, split_params
from wavedistill.models.networks import Conditioning, check_speaker_ids, gated_activation
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.distillation import Distillation

# -- the textbook formulas ---------------------------------------------------------------------


def textbook_gate(pre, cond=None):
    """``tanh(a) * sigmoid(b)`` of ``pre`` plus the materialised upsampled conditioning."""
    if cond is not None and cond.frames is not None:
        pre = pre + (cond.frames.unsqueeze(-1) * cond.filter).flatten(-2)
    if cond is not None and cond.bias is not None:
        pre = pre + cond.bias
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def textbook_mol_log_density(params, x, log_scale_min):
    """``logsumexp_k(log w_k + log sigmoid(z) + log sigmoid(-z) - log s_k)``, ``(B, [N,] T)``."""
    logits, means, log_scales = split_params(params, log_scale_min)
    log_w = F.log_softmax(logits, dim=1)
    if x.dim() == 3:
        log_w, means, log_scales = (v.unsqueeze(1) for v in (log_w, means, log_scales))
    z = (x.unsqueeze(-2) - means) * torch.exp(-log_scales)
    return torch.logsumexp(log_w + F.logsigmoid(z) + F.logsigmoid(-z) - log_scales, dim=-2)


# -- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("speaker", [False, True])
def test_conditioned_gate_equals_the_textbook_gate_with_its_gradients(speaker):
    torch.manual_seed(0)
    f64 = {"dtype": torch.float64, "requires_grad": True}
    pre = torch.randn(2, 6, 12, **f64)
    frames, filt = torch.randn(2, 6, 3, **f64), torch.randn(4, **f64)
    bias = torch.randn(2, 6, 1, **f64) if speaker else None

    def fast(pre, frames, filt, *bias):
        return gated_activation(pre, Conditioning(frames, filt, bias[0] if bias else None))

    inputs = (pre, frames, filt, *([bias] if speaker else []))
    assert torch.autograd.gradcheck(fast, inputs)
    torch.testing.assert_close(fast(*inputs), textbook_gate(pre, Conditioning(frames, filt, bias)))


def test_unconditioned_gate_in_float32_is_the_tanh_formula_to_float_resolution():
    torch.manual_seed(0)
    pre = (4 * torch.randn(3, 16, 500)).requires_grad_()
    ref = pre.detach().clone().requires_grad_()
    out, expected = gated_activation(pre), textbook_gate(ref)
    torch.testing.assert_close(out, expected, rtol=0, atol=3e-7)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    torch.testing.assert_close(pre.grad, ref.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("draws", [None, 5])
def test_mixture_log_density_equals_the_textbook_formula_with_its_gradients(draws):
    torch.manual_seed(0)
    params = torch.randn(2, 9, 7, dtype=torch.float64)
    params[:, 6:] -= 2.0  # some log-scales below the floor, where the gradient is zero
    params.requires_grad_()
    shape = (2, draws, 7) if draws else (2, 7)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, v: mol_log_density(p, v, -2.5), (params, x))
    torch.testing.assert_close(
        mol_log_density(params, x, -2.5), textbook_mol_log_density(params, x, -2.5)
    )


def test_speaker_ids_are_checked_on_the_cpu_only():
    with pytest.raises(Exception, match=r"speaker ids must be in \[0, 2\)"):
        check_speaker_ids(torch.tensor([0, 2]), 2, "student.num_speakers")
    # elsewhere reading the ids back would stall every step: no check (a meta tensor has no
    # values to read, so a check would raise)
    check_speaker_ids(torch.tensor([0, 2], device="meta"), 2, "student.num_speakers")


# -- one whole distillation step -------------------------------------------------------------


def step_config(output: str):
    """:func:`conftest.tiny_config` at 8 mels with 3 speakers and the given teacher head."""
    gaussian = output == "gaussian"
    return tiny_config(
        {
            "audio": {"n_mels": 8},
            "teacher": {
                "output": output,
                "layers": 4,
                "stacks": 2,
                "residual_channels": 16,
                "gate_channels": 32,
                "skip_channels": 16,
                "num_mixtures": 3,
                "upsample_factors": [4, 16],
                "num_speakers": 3,
            },
            "student": {
                "flow_layers": [3, 2],
                "channels": 8,
                "dilation_cycle": 3,
                "upsample_factors": [4, 16],
                "num_speakers": 3,
                "noise": "gaussian" if gaussian else "logistic",
            },
            "distill": {
                "num_draws": 16,
                "contrastive_weight": 0.3,
                "power_fft_sizes": [256, 128],
                "power_hop_sizes": [64, 32],
                "power_win_lengths": [256, 128],
            },
        }
    )


def loss_and_gradients(output: str):
    cfg = step_config(output)
    torch.manual_seed(0)
    teacher, student = WaveNetTeacher.from_config(cfg), IAFStudent.from_config(cfg)
    with torch.no_grad():  # spread the student's output so that its scales matter
        for flow in student.flows:
            flow.output.weight.normal_(std=0.2)
    g = torch.Generator().manual_seed(1)
    T = cfg.data.segment_length
    t = torch.arange(T) / cfg.audio.sample_rate
    audio = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(2, T, generator=g)
    batch = {
        "audio": audio,
        "mel": torch.randn(2, cfg.audio.n_mels, T // 64, generator=g),
        "speaker": torch.tensor([0, 2]),
    }
    torch.manual_seed(2)  # the step's noise and draws
    loss, logs = Distillation(teacher, cfg).loss(student, batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in student.named_parameters()}, logs


@pytest.mark.parametrize("output", ["mol", "gaussian"])
def test_distillation_step_equals_the_textbook_formulation(output, monkeypatch):
    loss, grads, logs = loss_and_gradients(output)
    with monkeypatch.context() as m:
        m.setattr(networks, "gated_activation", textbook_gate)
        m.setattr(logistic_mixture, "mol_log_density", textbook_mol_log_density)
        ref_loss, ref_grads, ref_logs = loss_and_gradients(output)
    assert math.isfinite(float(loss)) and abs(float(ref_loss)) > 0.1
    assert abs(float(loss - ref_loss)) <= 1e-5 * abs(float(ref_loss))
    for key in ("kl", "cross_entropy", "entropy", "power", "contrastive"):
        torch.testing.assert_close(logs[key], ref_logs[key], rtol=1e-5, atol=1e-6, msg=key)
    for name, ref in ref_grads.items():
        assert ref is not None and ref.abs().max() > 0, name
        # relative to the largest entry of each parameter's gradient: float32 sums of many
        # terms differ in their last bits, not more
        err = (grads[name] - ref).abs().max() / ref.abs().max()
        assert err <= 1e-4, (name, float(err))
