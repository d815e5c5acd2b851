"""The IAF student as a specification: causality (by gradient masks, per flow and in total),
the collapsed affine map, its log-determinant against an autograd Jacobian, the exact
inverse, the fast synthesis path and chunked synthesis against the module path, and the
receptive field and FLOP count against independent measurements."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wavedistill.bench.profiling import student_flops
from wavedistill.config import Config, config_from_dict
from wavedistill.errors import UserError
from wavedistill.models import fused_flows as fused_module
from wavedistill.models.student import IAFStudent

HOP = 16
N_MELS = 4


def make_student(
    flow_layers=(2, 3),
    channels=4,
    kernel_size=3,
    cycle=2,
    noise="logistic",
    num_speakers=0,
    tile=32,
    dtype=torch.float32,
    seed=0,
    out_std=0.3,
    initial_scale=0.1,
) -> IAFStudent:
    """A tiny student whose flows have output weights of a trained scale (not the near-identity
    initialisation), so every dependence is visible."""
    torch.manual_seed(seed)
    student = IAFStudent(
        N_MELS,
        list(flow_layers),
        channels,
        kernel_size,
        cycle,
        noise,
        upsample_factors=[4, 4],
        num_speakers=num_speakers,
        synthesis_tile=tile,
        initial_scale=initial_scale,
    )
    for flow in student.flows:
        torch.nn.init.normal_(flow.output.weight, std=out_std)
    return student.to(dtype)


def inputs(student: IAFStudent, batch: int, frames: int, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, N_MELS, frames, generator=g, dtype=dtype)
    z = student.sample_noise((batch, frames * HOP), generator=g).to(dtype)
    return z, mel


def jacobian(fn, z: torch.Tensor) -> torch.Tensor:
    """d fn(z)[0, t] / d z[0, s] for a single clip: (T, T)."""
    return torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], z[0])


# -- causality -----------------------------------------------------------------------------------


def test_every_flow_sees_only_its_input_before_t():
    student = make_student()
    z, mel = inputs(student, 1, 3)
    conds = student._per_flow(student.conditioning(mel))
    strictly_lower = torch.tril(torch.ones(z.shape[-1], z.shape[-1]), diagonal=-1).bool()
    for flow, cond in zip(student.flows, conds, strict=True):
        for output in (0, 1):  # mu, log s
            J = jacobian(lambda v, f=flow, c=cond, o=output: f(v, c)[o], z)
            assert (J[~strictly_lower] == 0).all()
            assert (J[strictly_lower] != 0).any()


def test_student_output_depends_on_noise_up_to_t_within_its_receptive_field():
    student = make_student()
    z, mel = inputs(student, 1, 4)
    J = jacobian(lambda v: student(v, mel)[0], z)
    T, rf = z.shape[-1], student.receptive_field
    t = torch.arange(T)
    lag = t[:, None] - t[None, :]  # t - s
    assert (J[lag < 0] == 0).all()  # no future noise
    assert (J[lag >= rf] == 0).all()  # nothing beyond the receptive field
    assert (J[T - 1, T - rf] != 0) and (J.diagonal() != 0).all()  # its edge is reached


def test_collapsed_parameters_depend_on_past_noise_only():
    student = make_student()
    z, mel = inputs(student, 1, 3)
    for output in (1, 2):  # mu_tot, log_s_tot
        J = jacobian(lambda v, o=output: student(v, mel)[o], z)
        assert (torch.triu(J) == 0).all()


# -- the collapsed map ---------------------------------------------------------------------------


def test_collapsed_map_equals_composing_the_flows_one_by_one():
    student = make_student(flow_layers=(2, 1, 3))
    z, mel = inputs(student, 2, 3)
    x, mu_tot, log_s_tot = student(z, mel)
    conds = student._per_flow(student.conditioning(mel))
    h = z
    for flow, cond in zip(student.flows, conds, strict=True):
        mu, log_s = flow(h, cond)
        h = h * torch.exp(log_s) + mu
    torch.testing.assert_close(x, h)
    torch.testing.assert_close(x, z * torch.exp(log_s_tot) + mu_tot)


def test_log_det_of_collapsed_scales_equals_autograd_jacobian():
    student = make_student(dtype=torch.float64)
    z, mel = inputs(student, 1, 2, dtype=torch.float64)
    J = jacobian(lambda v: student(v, mel)[0], z)
    sign, logabsdet = torch.linalg.slogdet(J)
    _, _, log_s_tot = student(z, mel)
    assert sign == 1
    torch.testing.assert_close(logabsdet, log_s_tot.sum(), rtol=1e-10, atol=1e-10)


# Inversion divides by s_tot at every step, so rounding errors of mu_tot are amplified step
# after step (an IAF's inverse is only as stable as its map is well-conditioned): the inverse is
# checked in float64 on a student of moderate weights, where the growth stays far below the
# tolerance.


def test_inverse_of_a_sample_is_its_noise_and_log_det():
    student = make_student(num_speakers=3, dtype=torch.float64, out_std=0.1, initial_scale=0.5)
    z, mel = inputs(student, 2, 3, dtype=torch.float64)
    speaker = torch.tensor([2, 0])
    x, _, log_s_tot = student(z, mel, speaker)
    z_back, log_det = student.inverse(x, mel, speaker)
    torch.testing.assert_close(z_back, z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(log_det, -log_s_tot.sum(-1))


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
def test_log_prob_is_noise_density_minus_log_scale(noise):
    student = make_student(noise=noise, dtype=torch.float64, out_std=0.1, initial_scale=0.5)
    z, mel = inputs(student, 2, 2, dtype=torch.float64)
    x, _, log_s_tot = student(z, mel)
    expected = student.noise_log_density(z) - log_s_tot
    torch.testing.assert_close(student.log_prob(x, mel), expected, rtol=1e-6, atol=1e-6)


def test_noise_densities_integrate_to_one():
    grid = torch.linspace(-40, 40, 200001, dtype=torch.float64)
    for noise in ("logistic", "gaussian"):
        student = make_student(noise=noise)
        mass = torch.trapezoid(student.noise_log_density(grid).exp(), grid)
        assert float(mass) == pytest.approx(1.0, abs=1e-9)


def test_noise_draws_have_the_noise_distribution_moments():
    g = torch.Generator().manual_seed(0)
    logistic = make_student(noise="logistic").sample_noise((200000,), g)
    gaussian = make_student(noise="gaussian").sample_noise((200000,), g)
    assert float(logistic.var()) == pytest.approx(math.pi**2 / 3, rel=0.02)
    assert float(gaussian.var()) == pytest.approx(1.0, rel=0.02)
    assert abs(float(logistic.mean())) < 0.02 and abs(float(gaussian.mean())) < 0.02


# -- synthesis -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size,tile,speakers", [(3, 32, 0), (2, 48, 3), (3, 1024, 3)])
def test_fast_synthesis_equals_the_module_path(kernel_size, tile, speakers):
    student = make_student(kernel_size=kernel_size, tile=tile, num_speakers=speakers)
    z, mel = inputs(student, 2, 7)
    speaker = torch.tensor([1, 2]) if speakers else None
    x, _, _ = student(z, mel, speaker)
    fast = student.synthesize_from_noise(z, mel, speaker)
    torch.testing.assert_close(fast, x.clamp(-1, 1), rtol=1e-5, atol=1e-5)


def test_fast_synthesis_runs_in_the_model_dtype():
    student = make_student(dtype=torch.float64)
    z, mel = inputs(student, 1, 3, dtype=torch.float64)
    fast = student.synthesize_from_noise(z, mel)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, student(z, mel)[0].clamp(-1, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_frames", [1, 2, 5, 100])
def test_spans_of_a_clip_equal_its_one_shot_synthesis(chunk_frames):
    student = make_student(flow_layers=(3, 2), cycle=3)
    mel = torch.randn(2, N_MELS, 11)
    z = student.sample_noise((2, 11 * HOP), torch.Generator().manual_seed(5))
    one_shot = student.synthesize_from_noise(z, mel)
    chunked = torch.cat(
        [
            student.synthesize_span(z, mel, f0, min(11, f0 + chunk_frames))
            for f0 in range(0, 11, chunk_frames)
        ],
        dim=1,
    )
    assert chunked.shape == one_shot.shape == (2, 11 * HOP)
    torch.testing.assert_close(chunked, one_shot, rtol=1e-5, atol=1e-5)


def test_synthesis_is_audio_and_reproducible():
    student = make_student()
    mel = torch.randn(1, N_MELS, 5)
    a = student.synthesize(mel, generator=torch.Generator().manual_seed(3))
    b = student.synthesize(mel, generator=torch.Generator().manual_seed(3))
    assert a.shape == (1, 5 * HOP) and a.abs().max() <= 1.0
    assert torch.equal(a, b) and not a.requires_grad


# -- construction --------------------------------------------------------------------------------


def test_defaults_are_the_parallel_wavenet_layout():
    student = IAFStudent.from_config(Config())
    assert [len(f.stack.blocks) for f in student.flows] == [10, 10, 10, 30]
    assert {f.stack.gate_channels for f in student.flows} == {128}
    # 1 + sum over flows of 1 + (k - 1) * sum(dilations): 3 * 2047 + 6139 + 1
    assert student.receptive_field == 1 + 3 * (1 + 2 * 1023) + (1 + 2 * 3 * 1023)


def test_a_fresh_student_starts_near_its_initial_scale():
    cfg = config_from_dict(
        {"student": {"flow_layers": [2, 2, 2], "channels": 8, "initial_scale": 0.05}}
    )
    torch.manual_seed(0)
    student = IAFStudent.from_config(cfg)
    z = student.sample_noise((1, 400))
    _, mu_tot, log_s_tot = student(z, torch.randn(1, 80, 2))
    torch.testing.assert_close(
        log_s_tot, torch.full_like(log_s_tot, math.log(0.05)), atol=0.1, rtol=0
    )
    assert mu_tot.abs().max() < 0.05


def test_the_constructor_defaults_to_the_configs_initial_scale():
    # the collapsed log-scale at initialisation is the sum of the flows' log s biases
    cfg = config_from_dict({"student": {"flow_layers": [1, 1], "channels": 2}})
    built = IAFStudent(cfg.audio.n_mels, [1, 1], channels=2)
    configured = IAFStudent.from_config(cfg)
    totals = [sum(f.output.bias[1].item() for f in m.flows) for m in (built, configured)]
    assert totals[0] == totals[1]
    assert totals[0] == pytest.approx(math.log(Config().student.initial_scale), rel=1e-6)


def test_flop_count_matches_a_flop_counter_on_the_module_path():
    # The counter sees every convolution; the conditioning add before each gate (2G per layer,
    # an elementwise multiply-add) is the one counted part it does not see.
    student = make_student(flow_layers=(2, 3), channels=6)
    z, mel = inputs(student, 1, 8)
    with FlopCounterMode(display=False) as counter:
        student(z, mel)
    counted = counter.get_total_flops() / z.shape[-1]
    count = student_flops(student)
    assert counted == pytest.approx(count.total - count.parts["conditioning_add"], rel=1e-12)


def test_bad_conditioning_is_a_user_error():
    student = make_student(num_speakers=2)
    z, mel = inputs(student, 1, 2)
    with pytest.raises(UserError, match="audio.n_mels"):
        student(z, torch.randn(1, N_MELS + 1, 2), torch.tensor([0]))
    with pytest.raises(UserError, match="mel frames of hop 16"):
        student(z[:, :-1], mel, torch.tensor([0]))
    with pytest.raises(UserError, match="student.num_speakers"):
        student(z, mel, torch.tensor([2]))


# -- the fused path at scale, batched, and its weight cache --------------------------------------

PARALLEL_WAVENET = {"flow_layers": (10, 10, 10, 30), "channels": 64, "cycle": 10, "out_std": 0.03}


def fused_x(student: IAFStudent, z, mel, speaker=None) -> torch.Tensor:
    """The fused path's unclamped output (what ``synthesize_from_noise`` clamps)."""
    with torch.inference_mode():
        return student._fused_run(z, student.conditioning(mel, speaker))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("device_path", ["cpu", "gpu"])
def test_fused_path_equals_forward_for_the_parallel_wavenet_layout(batch, device_path, monkeypatch):
    # 60 layers of 64 channels with dilations up to 512: taps reach across several tiles
    # (128 steps of 16-sample frames, split by the batch) and into the left padding
    if device_path == "gpu":  # what a GPU runs: conditioning upsampled apart, addmm products
        monkeypatch.setattr(fused_module, "_conditioning_in_product", lambda device: False)
        monkeypatch.setattr(fused_module, "_onednn", lambda x: False)
    student = make_student(**PARALLEL_WAVENET, tile=128)
    z, mel = inputs(student, batch, 40)
    x, _, _ = student(z, mel)
    fused = fused_x(student, z, mel)
    torch.testing.assert_close(fused, x, rtol=1e-5, atol=1e-5)
    assert x.abs().max() > 0.5  # a real signal, not a near-constant one
    if batch > 1:
        assert (x[1:] - x[0]).abs().min(-1).values.max() > 0  # the clips differ


def test_a_batch_synthesises_each_clip_as_alone():
    student = make_student(**PARALLEL_WAVENET, num_speakers=3, tile=96)
    z, mel = inputs(student, 4, 12)
    speaker = torch.tensor([2, 0, 1, 2])
    together = student.synthesize_from_noise(z, mel, speaker)
    for i in range(4):
        alone = student.synthesize_from_noise(z[i : i + 1], mel[i : i + 1], speaker[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_a_batch_is_one_computation_not_a_loop_over_clips(monkeypatch):
    # with a tile longer than the clip, every layer is one product however many clips
    student = make_student(flow_layers=(2, 3), tile=10_000)
    calls = []
    product = fused_module._linear_sigmoid
    monkeypatch.setattr(
        fused_module, "_linear_sigmoid", lambda *args: calls.append(args[0].shape) or product(*args)
    )
    for batch in (1, 4):
        calls.clear()
        z, mel = inputs(student, batch, 5)
        student.synthesize_from_noise(z, mel)
        assert len(calls) == 5  # one per layer
        assert all(shape[0] == batch * 5 * HOP for shape in calls)


def test_fused_weights_are_cached_and_follow_every_parameter_change():
    student = make_student(**PARALLEL_WAVENET)
    z, mel = inputs(student, 2, 4)
    flow = student.flows[0]

    def check():
        torch.testing.assert_close(
            fused_x(student, z, mel), student(z, mel)[0], rtol=1e-5, atol=1e-5
        )

    check()
    layers = fused_module._fused_layers(flow, torch.float32)
    check()
    # rearranged once, not per call
    assert fused_module._fused_layers(flow, torch.float32) is layers

    # load_state_dict
    student.load_state_dict(make_student(**PARALLEL_WAVENET, seed=7).state_dict())
    check()
    # an optimiser step
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    student(z, mel)[0].pow(2).mean().backward()
    optimizer.step()
    check()
    # an edit under no_grad
    with torch.no_grad():
        flow.stack.blocks[3].dilated.weight.mul_(-1.5)
        student.flows[-1].stack.blocks[-1].output.bias.add_(0.1)
    check()
    assert fused_module._fused_layers(flow, torch.float32) is not layers


def test_synthesis_under_autocast_runs_in_its_dtype():
    # wavedistill benchmark --dtype bfloat16 times the student under autocast
    student = make_student(**PARALLEL_WAVENET)
    z, mel = inputs(student, 2, 6)
    exact = student.synthesize_from_noise(z, mel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = student.synthesize_from_noise(z, mel)
    assert half.dtype == torch.bfloat16
    error = (half.float() - exact).pow(2).sum() / exact.pow(2).sum()
    assert 0 < error < 1e-2  # rounded, yet the same audio
