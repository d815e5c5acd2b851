"""Specification of the WaveNet building blocks: causality, receptive field, the folded
residual/skip projection, and conditioning computed at frame rate."""

import pytest
import torch
import torch.nn.functional as F

from wavedistill.models.networks import (
    CausalConv1d,
    Conditioner,
    Conditioning,
    ConditioningUpsampler,
    ResidualBlock,
    WaveNetStack,
    count_parameters,
    dilation_cycle,
    gated_activation,
)


def conv_step(conv: CausalConv1d, window: torch.Tensor) -> torch.Tensor:
    """One output sample of ``conv`` from its last ``conv.window`` inputs, the reference for the
    causal padding of ``forward``: ``(B, C_in, (k-1)*d + 1)``, oldest first -> ``(B, C_out, 1)``."""
    return F.conv1d(window, conv.weight, conv.bias, dilation=conv.dilation)


def conditioning_at(cond: Conditioning, t: int) -> torch.Tensor:
    """The conditioning of sample ``t`` alone, ``W[t % hop] * frames[:, :, t // hop] + bias``
    (the formula of the module docstring): ``(B, N, 1)``."""
    out = None
    if cond.frames is not None:
        f, o = divmod(t, cond.filter.shape[0])
        out = cond.frames[:, :, f : f + 1] * cond.filter[o]
    if cond.bias is not None:
        out = cond.bias if out is None else out + cond.bias
    assert out is not None, "empty conditioning"
    return out


def dense(cond: Conditioning, num_samples: int) -> torch.Tensor:
    """The conditioning of every sample, materialised by ``add_to``: ``(B, N, num_samples)``."""
    ref = cond.frames if cond.frames is not None else cond.bias
    return cond.add_to(ref.new_zeros(ref.shape[0], ref.shape[1], num_samples))


def input_gradient_support(fn, x: torch.Tensor, t: int) -> set[int]:
    """Time indices s where d out[..., t] / d x[..., s] is non-zero."""
    x = x.clone().requires_grad_(True)
    fn(x)[..., t].sum().backward()
    return set(torch.nonzero(x.grad.abs().sum(dim=(0, 1)) > 0).flatten().tolist())


@pytest.mark.parametrize("kernel_size,dilation", [(2, 1), (2, 4), (3, 1), (3, 2), (3, 5)])
def test_causal_conv_sees_exactly_its_window(kernel_size, dilation):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 4, kernel_size, dilation)
    x = torch.randn(2, 3, 40)
    t = 30
    expected = {t - i * dilation for i in range(kernel_size)}
    assert input_gradient_support(conv, x, t) == expected
    assert conv.window == (kernel_size - 1) * dilation + 1


def test_causal_conv_step_equals_batch_output():
    torch.manual_seed(0)
    conv = CausalConv1d(3, 5, 3, dilation=4)
    x = torch.randn(2, 3, 30)
    full = conv(x)
    for t in (conv.window - 1, 17, 29):
        window = x[..., t - conv.window + 1 : t + 1]
        torch.testing.assert_close(conv_step(conv, window), full[..., t : t + 1])


def test_dilation_cycle_doubles_and_repeats():
    assert dilation_cycle(6, 3) == [1, 2, 4, 1, 2, 4]
    assert dilation_cycle(4, 10) == [1, 2, 4, 8]


def test_residual_block_folds_residual_and_skip_into_one_projection():
    torch.manual_seed(0)
    block = ResidualBlock(6, 8, 5, kernel_size=3, dilation=2)
    assert block.output.out_channels == 6 + 5
    x = torch.randn(2, 6, 20)
    res, skip = block(x)
    # reference: the textbook block with separate residual and skip 1x1 convs
    a, b = block.dilated(x).chunk(2, dim=1)
    z = torch.tanh(a) * torch.sigmoid(b)
    w, bias = block.output.weight, block.output.bias
    torch.testing.assert_close(res, x + F.conv1d(z, w[:6], bias[:6]))
    torch.testing.assert_close(skip, F.conv1d(z, w[6:], bias[6:]))


def test_residual_block_without_skip_or_without_residual():
    x = torch.randn(1, 4, 10)
    res, skip = ResidualBlock(4, 6, 0, 2, 1)(x)
    assert res.shape == (1, 4, 10) and skip is None
    res, skip = ResidualBlock(4, 6, 3, 2, 1, residual=False)(x)
    assert res is None and skip.shape == (1, 3, 10)


def test_stack_parameter_count_matches_hand_count():
    R, G, S, k, L = 4, 6, 3, 2, 3
    stack = WaveNetStack(R, G, S, k, dilation_cycle(L, 3))
    dilated = G * R * k + G
    out_full = (G // 2) * (R + S) + R + S
    out_last = (G // 2) * S + S  # the last block emits its skip only
    assert count_parameters(stack) == L * dilated + (L - 1) * out_full + out_last


def test_a_frozen_module_still_counts_all_its_parameters():
    stack = WaveNetStack(4, 6, 3, 2, dilation_cycle(3, 3))
    total = count_parameters(stack)
    stack.requires_grad_(False)
    assert count_parameters(stack) == total > 0
    assert count_parameters(stack, trainable=True) == 0


@pytest.mark.parametrize("skip_channels", [0, 3])
@pytest.mark.parametrize("kernel_size,layers,cycle", [(2, 6, 3), (3, 4, 2), (3, 5, 5)])
def test_stack_is_causal_and_its_receptive_field_is_the_gradient_support(
    skip_channels, kernel_size, layers, cycle
):
    torch.manual_seed(0)
    stack = WaveNetStack(4, 6, skip_channels, kernel_size, dilation_cycle(layers, cycle))
    T = stack.receptive_field + 20
    t = T - 5

    def out(x):
        res, skips = stack(x)
        return skips if skip_channels else res

    support = input_gradient_support(out, torch.randn(2, 4, T), t)
    assert max(support) == t  # nothing from the future
    assert support == set(range(t - stack.receptive_field + 1, t + 1))


def test_upsampler_equals_stack_of_channel_shared_transposed_convs():
    torch.manual_seed(0)
    up = ConditioningUpsampler([2, 3, 4])
    with torch.no_grad():
        for w in up.stages:
            w.normal_()
    x = torch.randn(2, 5, 7)
    ref = x
    for w in up.stages:  # one filter shared by all 5 channels: a depthwise transposed conv
        f = w.numel()
        ref = F.conv_transpose1d(ref, w.view(1, 1, f).expand(5, 1, f), stride=f, groups=5)
    assert up.hop == 24
    torch.testing.assert_close(up(x), ref)


def test_upsampler_frame_drives_exactly_its_hop_of_samples():
    torch.manual_seed(0)
    up = ConditioningUpsampler([2, 5])
    with torch.no_grad():
        for w in up.stages:
            w.uniform_(0.5, 1.5)  # no zero taps, so every dependency is visible
    x = torch.randn(1, 3, 6)
    hop = up.hop
    for f in range(6):
        bumped = x.clone()
        bumped[..., f] += 1.0
        changed = (up(bumped) - up(x)).abs().sum(dim=(0, 1)) > 0
        assert torch.nonzero(changed).flatten().tolist() == list(range(f * hop, (f + 1) * hop))


def tiny_conditioner(context=1, num_speakers=0):
    torch.manual_seed(0)
    cond = Conditioner(
        out_channels=12,
        n_mels=5,
        upsample_factors=[2, 3],
        context=context,
        num_speakers=num_speakers,
        speaker_dim=4,
    )
    with torch.no_grad():
        for w in cond.upsampler.stages:
            w.normal_()
    return cond


@pytest.mark.parametrize("context", [0, 1])
def test_projection_at_frame_rate_equals_projection_of_upsampled_mel(context):
    cond = tiny_conditioner(context)
    mel = torch.randn(2, 5, 4)
    fast = dense(cond(mel), 4 * 6)
    context_mel = cond.context(mel) if cond.context is not None else mel
    slow = F.conv1d(cond.upsampler(context_mel), cond.projection.weight)  # upsample, project
    torch.testing.assert_close(fast, slow)


def test_conditioning_of_one_sample_equals_the_dense_conditioning():
    cond = tiny_conditioner(num_speakers=3)(torch.randn(2, 5, 4), torch.tensor([0, 2]))
    dense_all = dense(cond, 24)
    for t in (0, 5, 6, 13, 23):
        torch.testing.assert_close(conditioning_at(cond, t), dense_all[..., t : t + 1])
    layer = cond.channels(6, 12)
    torch.testing.assert_close(dense(layer, 24), dense_all[:, 6:12])


def test_speaker_term_is_constant_in_time_and_depends_on_the_speaker():
    torch.manual_seed(0)
    conditioner = Conditioner(out_channels=12, num_speakers=3, speaker_dim=4)  # speaker only
    cond = conditioner(None, torch.tensor([0, 1]))
    full = dense(cond, 10)
    assert torch.equal(full, full[..., :1].expand_as(full))
    assert not torch.allclose(full[0], full[1])


def test_unconditional_conditioner_returns_none():
    assert Conditioner(out_channels=8)(None, None) is None


def test_gated_activation_gradient_matches_autograd_of_the_plain_formula():
    torch.manual_seed(0)
    pre = torch.randn(2, 8, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gated_activation, (pre,))
    a, b = pre.detach().chunk(2, dim=1)
    torch.testing.assert_close(gated_activation(pre), torch.tanh(a) * torch.sigmoid(b))


def test_conditioning_add_gradients_match_finite_differences():
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    filt = torch.randn(6, dtype=torch.float64, requires_grad=True)
    pre = torch.randn(2, 3, 24, dtype=torch.float64, requires_grad=True)

    def add(pre, frames, filt):
        return Conditioning(frames, filt, None).add_to(pre)

    assert torch.autograd.gradcheck(add, (pre, frames, filt))
