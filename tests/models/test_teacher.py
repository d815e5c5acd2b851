"""Specification of the WaveNet teacher: p(x_t | x_<t, c) in one parallel pass (MAF direction),
a normalised distribution end to end, and the maximum-likelihood objective."""

import math

import pytest
import torch

from wavedistill.config import TeacherConfig, load_config
from wavedistill.errors import UserError
from wavedistill.models.distributions import NUM_CLASSES_16BIT, build_distribution
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.likelihood import MaximumLikelihood

HOP = 4  # upsample factors [2, 2]


def tiny_teacher(
    output="mol",
    n_mels=3,
    kernel_size=2,
    layers=4,
    stacks=2,
    context=1,
    num_speakers=0,
    levels=16,
    seed=0,
):
    torch.manual_seed(seed)
    head = build_distribution(TeacherConfig(output=output, num_mixtures=2, mu_law_levels=levels))
    model = WaveNetTeacher(
        head,
        layers=layers,
        stacks=stacks,
        kernel_size=kernel_size,
        residual_channels=4,
        gate_channels=6,
        skip_channels=5,
        n_mels=n_mels,
        upsample_factors=[2, 2],
        conditioning_context=context,
        num_speakers=num_speakers,
        speaker_dim=3,
        mu_law_levels=levels if output == "categorical" else None,
    )
    with torch.no_grad():  # non-trivial upsampling filters, so mel dependencies are visible
        if model.conditioner.upsampler is not None:
            for w in model.conditioner.upsampler.stages:
                w.uniform_(0.5, 1.5)
    return model


def audio_and_mel(B, frames, n_mels=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    audio = torch.rand(B, frames * HOP, generator=g) * 1.6 - 0.8
    return audio, torch.randn(B, n_mels, frames, generator=g)


def hand_receptive_field(layers: int, stacks: int, kernel_size: int) -> int:
    """``1 + (k - 1) * sum(dilations)`` with dilations ``1, 2, 4, ...`` in ``stacks`` cycles."""
    cycle = layers // stacks
    return 1 + (kernel_size - 1) * sum(2 ** (i % cycle) for i in range(layers))


def test_receptive_field_counts_dilations():
    # kernel 2, dilations 1,2,4 -> 1 + 1 + 2 + 4
    assert tiny_teacher(kernel_size=2, layers=3, stacks=1).receptive_field == 8
    # two cycles of 1,2 with kernel 3 -> 1 + 2 * (1 + 2 + 1 + 2)
    assert tiny_teacher(kernel_size=3, layers=4, stacks=2).receptive_field == 13


@pytest.mark.parametrize("use_mel", [False, True])
@pytest.mark.parametrize("kernel_size,layers,stacks", [(2, 4, 2), (2, 6, 1), (3, 4, 2), (3, 6, 3)])
def test_params_at_t_depend_on_exactly_the_receptive_field_before_t(
    kernel_size, layers, stacks, use_mel
):
    model = tiny_teacher(
        n_mels=3 if use_mel else 0, kernel_size=kernel_size, layers=layers, stacks=stacks
    )
    rf = hand_receptive_field(layers, stacks, kernel_size)
    assert model.receptive_field == rf == model.stack.receptive_field
    frames = (rf + 12) // HOP + 1
    audio, mel = audio_and_mel(2, frames)
    audio.requires_grad_(True)
    T = audio.shape[-1]
    for t in (0, 1, rf - 1, T - 1):
        audio.grad = None
        model(audio, mel if use_mel else None)[..., t].sum().backward()
        support = set(torch.nonzero(audio.grad.abs().sum(0) > 0).flatten().tolist())
        assert support == set(range(max(0, t - rf), t)), f"t={t}"


@pytest.mark.parametrize("context", [0, 1])
def test_mel_frames_act_no_earlier_than_their_own_samples(context):
    model = tiny_teacher(context=context)
    audio, mel = audio_and_mel(1, 6)
    mel.requires_grad_(True)
    for t in (0, 3, 4, 9, 23):
        mel.grad = None
        model(audio, mel)[..., t].sum().backward()
        frames = torch.nonzero(mel.grad.abs().sum(dim=(0, 1)) > 0).flatten().tolist()
        assert max(frames) == min(t // HOP + context, 5), f"t={t}"


@pytest.mark.parametrize(
    "output,levels",
    [("categorical", 16), ("mol", NUM_CLASSES_16BIT), ("gaussian", NUM_CLASSES_16BIT)],
)
def test_log_prob_sums_to_one_over_every_value_of_one_step(output, levels):
    """End to end: fix x_<t, put each possible value at step t, sum p over the batch."""
    model = tiny_teacher(output=output, levels=levels)
    audio, mel = audio_and_mel(1, 2)
    t = 5
    if output == "categorical":
        from wavedistill.data.audio import mu_law_dequantize

        values = mu_law_dequantize(torch.arange(levels), levels)
    else:
        values = torch.arange(levels) * (2.0 / (levels - 1)) - 1.0
    batch = audio.expand(levels, -1).clone()
    batch[:, t] = values
    with torch.no_grad():
        logp = model.log_prob(batch, mel.expand(levels, -1, -1))
    total = torch.logsumexp(logp[:, t].double(), dim=0).exp().item()
    assert total == pytest.approx(1.0, abs=1e-4)
    # the value at t was never an input to its own prediction, and later steps do see it
    assert torch.allclose(logp[:, :t], logp[:1, :t].expand(levels, -1))


def test_speaker_embedding_changes_outputs_only_when_speakers_are_configured():
    audio, mel = audio_and_mel(2, 3)
    same = audio[:1].expand(2, -1), mel[:1].expand(2, -1, -1)
    multi = tiny_teacher(num_speakers=3)
    out = multi(*same, torch.tensor([0, 2]))
    assert not torch.allclose(out[0], out[1])
    single = tiny_teacher(num_speakers=0)
    out = single(*same, torch.tensor([0, 2]))
    torch.testing.assert_close(out[0], out[1])
    with pytest.raises(UserError, match="num_speakers"):
        multi(*same, torch.tensor([0, 3]))


def test_parameter_count_matches_hand_count():
    R, G, S, k, L, n_mels, P = 4, 6, 5, 2, 4, 3, 6  # mol with 2 mixtures: P = 3 * 2
    model = tiny_teacher(kernel_size=k, layers=L, context=1, num_speakers=2)
    expected = (
        R
        + R  # input 1x1 (1 -> R)
        + L * (G * R * k + G)  # dilated convs
        + (L - 1) * ((G // 2) * (R + S) + R + S)
        + (G // 2) * S
        + S  # residual+skip 1x1s
        + n_mels * n_mels * 3  # context conv over +-1 frame, no bias
        + n_mels * L * G  # frame-rate projection to every layer's gates, no bias
        + 2
        + 2  # upsampling filters
        + 2 * 3
        + 3 * L * G  # speaker embedding and its projection
        + S * S
        + S
        + S * P
        + P  # head
    )
    assert model.num_parameters == expected


def test_from_config_builds_the_configured_model():
    cfg = load_config(
        None,
        [
            "teacher.layers=6",
            "teacher.stacks=2",
            "teacher.residual_channels=8",
            "teacher.gate_channels=8",
            "teacher.skip_channels=8",
            "teacher.output=categorical",
            "teacher.mu_law_levels=32",
        ],
    )
    model = WaveNetTeacher.from_config(cfg)
    assert model.receptive_field == hand_receptive_field(6, 2, cfg.teacher.kernel_size)
    assert model.distribution.num_params == 32
    frames = 2
    audio = torch.zeros(1, frames * cfg.audio.hop_length)
    params = model(audio, torch.zeros(1, cfg.audio.n_mels, frames))
    assert params.shape == (1, 32, audio.shape[-1])


def test_categorical_input_is_the_mu_law_class_spread_over_minus_one_to_one():
    model = tiny_teacher(output="categorical", levels=16)
    x = model.encode_input(torch.tensor([[-1.0, 0.0, 1.0]]))
    torch.testing.assert_close(x, torch.tensor([[[-1.0, 1 / 15, 1.0]]]))


def test_mismatched_conditioning_is_a_user_error():
    model = tiny_teacher()
    audio, mel = audio_and_mel(1, 3)
    with pytest.raises(UserError, match="no mel"):
        model(audio)
    with pytest.raises(UserError, match="n_mels"):
        model(audio, mel[:, :2])
    with pytest.raises(UserError, match="samples"):
        model(audio[:, :-1], mel)


def test_maximum_likelihood_loss_is_mean_nll_and_trains_every_parameter():
    model = tiny_teacher(num_speakers=2)
    audio, mel = audio_and_mel(2, 3)
    batch = {"audio": audio, "mel": mel, "speaker": torch.tensor([0, 1])}
    loss, logs = MaximumLikelihood().loss(model, batch)
    expected = -model.log_prob(audio, mel, batch["speaker"]).mean()
    torch.testing.assert_close(loss, expected)
    assert logs["nll_bits"] == pytest.approx(expected.item() / math.log(2))
    assert model.nll_bits(audio, mel, batch["speaker"]).item() == pytest.approx(logs["nll_bits"])
    loss.backward()
    # an unused parameter would break DistributedDataParallel
    assert all(p.grad is not None for p in model.parameters())
    assert MaximumLikelihood().validate(model, batch)["nll_bits"] == pytest.approx(logs["nll_bits"])


def test_unconditional_model_needs_no_mel():
    model = tiny_teacher(n_mels=0)
    logp = model.log_prob(torch.zeros(2, 10))
    assert logp.shape == (2, 10) and torch.isfinite(logp).all()


def test_bf16_autocast_keeps_the_distribution_parameters_float32():
    model = tiny_teacher()
    audio, mel = audio_and_mel(1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = model(audio, mel)
    assert params.dtype == torch.float32
    assert model.double()(audio.double(), mel.double()).dtype == torch.float64
