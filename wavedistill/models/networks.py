"""WaveNet building blocks shared by the teacher (MAF direction) and the student (IAF direction).

Everything works on ``(B, C, T)`` tensors. Fast inference does not run these modules: the
teacher's cached sampler (:mod:`wavedistill.models.sampling`) and the student's fused
synthesis (:func:`wavedistill.models.fused_flows.fused_flow`) lay the same weights out their own
way, and the tests check them against the batch path here.

Pieces, from the bottom up:

* :class:`CausalConv1d` -- a dilated convolution padded on the left by ``(k - 1) * d`` so that
  output ``t`` sees inputs ``t - (k - 1) * d, ..., t`` only. :meth:`CausalConv1d.step` applies the
  same weights to a window of the last ``(k - 1) * d + 1`` inputs (one output sample): a
  reference step the tests use to check the padding of the batch path.
* :class:`ResidualBlock` -- dilated conv ``R -> G``, plus conditioning, ``tanh`` of the first half
  times ``sigmoid`` of the second half, then ONE 1x1 conv ``G/2 -> R + S`` whose output is split
  into the residual update and the skip output (``S = 0``: no skip; ``residual=False``: skip only,
  for the last layer of a skip-summing stack, so that every parameter receives a gradient).
* :class:`WaveNetStack` -- residual blocks with a cycle of dilations ``1, 2, 4, ...``; returns the
  last residual stream and the sum of the skips.
* :class:`ConditioningUpsampler`, :class:`Conditioner`, :class:`Conditioning` -- local (mel) and
  global (speaker) conditioning, computed at frame rate (below).

Conditioning at frame rate
--------------------------
The upsampler is linear and shared by all channels: stage ``i`` is a non-overlapping transposed
convolution with kernel = stride = ``factors[i]``, one filter ``w_i`` for every channel and no bias.
A stack of such stages collapses to one: with ``W = w_1 (x) w_2 (x) ... (x) w_n`` (Kronecker
product, length ``hop = prod(factors)``) the upsampled signal is
``u[c, f * hop + o] = W[o] * m[c, f]``.
Because this map acts on time only and the per-layer conditioning projection acts on channels only,
they commute: projecting the (normalised) mel to every layer's ``G`` gate channels at FRAME rate
(all layers in one conv ``n_mels -> L * G``) and then upsampling equals upsampling the mel and then
projecting it -- but costs ``O(G)`` per sample and layer instead of ``O(n_mels * G)``.

For layer ``l`` (channels ``l*G ... (l+1)*G - 1`` of the projection ``P``, shape ``(B, L*G, F)``)
and speaker term ``g`` (shape ``(B, L*G, 1)``), the conditioning added before the gate at sample
``t = f * hop + o`` is::

    cond[:, l*G + c, t] = W[o] * P[:, l*G + c, f] + g[:, l*G + c]

:meth:`Conditioning.at` evaluates exactly this for one sample, for every layer at once (the
reference the tests check the upsampled path against; the teacher's sampler evaluates the same
formula on its own buffers); frame ``f`` drives samples ``[f * hop, (f + 1) * hop)`` and
nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavedistill.errors import UserError


def dilation_cycle(layers: int, cycle: int) -> list[int]:
    """Dilations ``2 ** (i % cycle)`` for ``i < layers``: ``cycle`` doubling layers, repeated."""
    return [2 ** (i % cycle) for i in range(layers)]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or any ``.module``) wrapper; itself
    when unwrapped."""
    return getattr(model, "module", model)


def count_parameters(module: nn.Module, trainable: bool = False) -> int:
    """Number of scalars in ``module``: all of them (a loaded, frozen model counts in full), or
    with ``trainable=True`` only those that require a gradient."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


# -- convolution -----------------------------------------------------------------------------


class CausalConv1d(nn.Conv1d):
    """Dilated causal convolution: output ``t`` depends on inputs ``t - (k-1)*d ... t``.

    ``forward``: ``(B, C_in, T) -> (B, C_out, T)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        bias: bool = True,
    ):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    @property
    def left_padding(self) -> int:
        """Zeros prepended in time: ``(k - 1) * d``."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    @property
    def window(self) -> int:
        """Input samples one output sample depends on: ``(k - 1) * d + 1``."""
        return self.left_padding + 1

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, T) -> (B, C_out, T)``."""
        return super().forward(F.pad(x, (self.left_padding, 0)))


# -- gated residual block --------------------------------------------------------------------


class _GatedTanh(torch.autograd.Function):
    """``tanh(a) * sigmoid(b)`` of ``[a | b] = pre + upsample(frames)`` along channels:
    ``pre (B, G, T)``, ``frames (B, G, F)`` and ``filt (hop,)`` (both ``None``: no conditioning)
    -> ``(B, G/2, T)``.

    Why a custom function: the conditioned sum is written once and becomes, in place, the
    buffer ``[tanh(a) | sigmoid(b)]`` that the backward reuses, and the backward writes both
    halves' gradients straight into one ``(B, G, T)`` buffer (autograd would keep the sum, the
    two activations and the temporaries of ``chunk``'s and ``mul``'s backward). ``tanh(a)`` is
    taken as ``2 sigmoid(2a) - 1``: one ``sigmoid`` call covers all ``G`` rows, and the CPU
    ``tanh`` kernel is several times slower than ``sigmoid``.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, frames: Tensor | None, filt: Tensor | None) -> Tensor:
        if frames is None:
            act = pre.clone()
        else:
            assert filt is not None, "frames come with their upsampling filter"
            B, N, F_ = frames.shape
            act = torch.addcmul(pre.reshape(B, N, F_, -1), frames.unsqueeze(-1), filt).view(
                pre.shape
            )
        t, s = act.chunk(2, dim=1)
        t.mul_(2.0)
        act.sigmoid_()
        t.mul_(2.0).sub_(1.0)  # 2 sigmoid(2a) - 1 = tanh(a)
        ctx.save_for_backward(act, frames, filt)
        return t * s

    @staticmethod
    def backward(ctx, grad: Tensor):
        act, frames, filt = ctx.saved_tensors
        t, s = act.chunk(2, dim=1)
        out = torch.empty_like(act)
        ga, gb = out.chunk(2, dim=1)
        torch.mul(grad, s, out=ga)  # g s
        torch.mul(ga, t, out=gb)  # g s t
        ga.addcmul_(gb, t, value=-1.0)  # g s (1 - t^2)
        gb.addcmul_(gb, s, value=-1.0)  # g t s (1 - s)
        g_frames, g_filt = _upsampled_grads(out, frames, filt, ctx.needs_input_grad[1:])
        return out, g_frames, g_filt


def gated_activation(pre: Tensor, cond: Conditioning | None = None) -> Tensor:
    """``tanh(first half) * sigmoid(second half)`` of ``pre + cond`` along channels:
    ``pre (B, G, T)``, ``cond`` of ``G`` channels -> ``(B, G/2, T)``."""
    frames = cond.frames if cond is not None else None
    if (
        torch.jit.is_tracing()
        or torch.compiler.is_exporting()
        or not torch.is_grad_enabled()
        or not (pre.requires_grad or (frames is not None and frames.requires_grad))
    ):
        # inference (e.g. one sampling step) and exporters: plain ops, least overhead
        if cond is not None:
            pre = cond.add_to(pre)
        a, b = pre.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)
    if cond is not None and cond.bias is not None:
        pre = pre + cond.bias
    if cond is None or frames is None:
        return _GatedTanh.apply(pre, None, None)
    _check_frames(pre, frames, cond.filter)
    return _GatedTanh.apply(pre, frames, cond.filter)


class ResidualBlock(nn.Module):
    """Gated residual block of WaveNet.

    ``x (B, R, T)`` -> dilated causal conv ``R -> G`` -> ``+ conditioning`` -> gate ``G/2`` ->
    one 1x1 conv ``G/2 -> R + S`` split into the residual update (added to ``x``) and the skip.
    :meth:`forward` is the batch path. The teacher's cached sampler
    (:mod:`wavedistill.models.sampling`) and the student's fused synthesis do not call this module:
    they rearrange its weights, and tests check them against :meth:`forward`.
    """

    def __init__(
        self,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        kernel_size: int,
        dilation: int,
        residual: bool = True,
    ):
        super().__init__()
        if gate_channels % 2:
            raise ValueError(f"gate_channels must be even, got {gate_channels}")
        self.residual_channels = residual_channels if residual else 0
        self.skip_channels = skip_channels
        if self.residual_channels + skip_channels == 0:
            raise ValueError("a residual block needs a residual or a skip output")
        self.dilated = CausalConv1d(residual_channels, gate_channels, kernel_size, dilation)
        # residual and skip projections folded into one 1x1 conv: one matmul instead of two
        self.output = nn.Conv1d(gate_channels // 2, self.residual_channels + skip_channels, 1)

    @property
    def gate_channels(self) -> int:
        return self.dilated.out_channels

    def gate_and_project(
        self, pre: Tensor, x: Tensor, cond: Conditioning | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Everything after the dilated conv (per-sample operations only).

        ``pre``: ``(B, G, T)`` dilated conv output; ``cond``: added to it before the gate;
        ``x``: ``(B, R, T)`` block input. Returns ``(x + residual update (B, R, T) | None,
        skip (B, S, T) | None)``.
        """
        out = self.output(gated_activation(pre, cond))  # (B, R + S, T)
        if self.skip_channels == 0:
            return x + out, None
        if self.residual_channels == 0:
            return None, out
        res, skip = out.split([self.residual_channels, self.skip_channels], dim=1)
        return x + res, skip

    def forward(
        self, x: Tensor, cond: Conditioning | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """``x (B, R, T)``, ``cond`` with ``G`` channels -> ``(residual (B, R, T), skip (B, S, T))``
        (either may be ``None``, see the class docstring)."""
        return self.gate_and_project(self.dilated(x), x, cond)


class WaveNetStack(nn.Module):
    """Residual blocks with the given dilations.

    ``forward(x (B, R, T), cond with L*G channels) -> (last residual (B, R, T) | None,
    sum of skips (B, S, T) | None)``. With ``skip_channels > 0`` the last block emits its skip
    only (its residual output would have no consumer); with ``skip_channels = 0`` (the student's
    flows) every block is residual-only and the last residual stream is the output.
    """

    def __init__(
        self,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        kernel_size: int,
        dilations: Sequence[int],
    ):
        super().__init__()
        n = len(dilations)
        # an nn.ModuleList, typed as the blocks it holds
        self.blocks = cast(
            "Sequence[ResidualBlock]",
            nn.ModuleList(
                ResidualBlock(
                    residual_channels,
                    gate_channels,
                    skip_channels,
                    kernel_size,
                    d,
                    residual=skip_channels == 0 or i < n - 1,
                )
                for i, d in enumerate(dilations)
            ),
        )
        self.kernel_size = kernel_size
        self.dilations = list(dilations)
        self.gate_channels = gate_channels

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on: ``1 + (k - 1) * sum(dilations)``."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    @property
    def conditioning_channels(self) -> int:
        """Channels of the conditioning this stack takes: ``L * G``."""
        return len(self.blocks) * self.gate_channels

    def forward(
        self, x: Tensor, cond: Conditioning | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        G = self.gate_channels
        skips = None
        for i, block in enumerate(self.blocks):
            layer_cond = cond.channels(i * G, (i + 1) * G) if cond is not None else None
            out, skip = block(x, layer_cond)
            if skip is not None:
                skips = skip if skips is None else skips + skip
            x = out
        return x, skips


# -- conditioning ----------------------------------------------------------------------------


def check_speaker_ids(speaker: Tensor, num_speakers: int, key: str) -> None:
    """Raise a :class:`~wavedistill.errors.UserError` unless every id of ``speaker (B,)`` is in
    ``[0, num_speakers)`` (``key`` names the config setting).

    Checked only where the ids live on the CPU: on an accelerator, reading them back would make
    every training step wait for the device (the embedding lookup still rejects a bad id there).
    """
    if speaker.device.type != "cpu" or speaker.numel() == 0:
        return
    if int(speaker.min()) < 0 or int(speaker.max()) >= num_speakers:
        raise UserError(
            f"speaker ids must be in [0, {num_speakers}) ({key}), got {speaker.tolist()}"
        )


class _AddUpsampled(torch.autograd.Function):
    """``pre + upsample(frames)`` with a channel-shared filter, never materialising the
    upsampled term: ``pre (B, N, F*hop)``, ``frames (B, N, F)``, ``filter (hop,)``.

    Its backward reduces the incoming gradient with two matrix-vector products instead of the
    full-size products and sums autograd would build for ``addcmul``'s broadcast.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, frames: Tensor, filt: Tensor) -> Tensor:
        B, N, F_ = frames.shape
        ctx.save_for_backward(frames, filt)
        return torch.addcmul(pre.reshape(B, N, F_, -1), frames.unsqueeze(-1), filt).view(pre.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        frames, filt = ctx.saved_tensors
        return (grad, *_upsampled_grads(grad, frames, filt, ctx.needs_input_grad[1:]))


def _upsampled_grads(
    grad: Tensor, frames: Tensor | None, filt: Tensor | None, needs: Sequence[bool]
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``frames (B, N, F)`` and ``filt (hop,)`` from the gradient ``(B, N, F*hop)``
    of ``upsample(frames)``: two matrix-vector products (``needs``: which are wanted)."""
    g_frames = g_filt = None
    if frames is None:
        return g_frames, g_filt
    assert filt is not None, "frames come with their upsampling filter"
    B, N, F_ = frames.shape
    g4 = grad.reshape(B, N, F_, filt.shape[0])  # (B, N, F, hop)
    if needs[0]:
        g_frames = torch.matmul(g4, filt.to(g4.dtype)).to(frames.dtype)  # (B, N, F)
    if needs[1]:
        flat = frames.to(g4.dtype).reshape(1, -1)  # (1, B*N*F)
        g_filt = torch.mm(flat, g4.reshape(-1, filt.shape[0]))[0].to(filt.dtype)
    return g_frames, g_filt


def _check_frames(pre: Tensor, frames: Tensor, filt: Tensor | None) -> None:
    if filt is None:
        raise ValueError("conditioning frames without their upsampling filter")
    T, F_, hop = pre.shape[-1], frames.shape[-1], filt.shape[0]
    if T != F_ * hop:
        raise ValueError(f"{T} samples do not match {F_} frames of hop {hop}")


@dataclass
class Conditioning:
    """Per-utterance conditioning of ``N`` channels (``L * G`` for a whole stack), kept at frame
    rate; the value a :class:`Conditioner` returns. Either part may be ``None``.

    ``frames``: ``(B, N, F)`` frame-rate projection of the mel; ``filter``: ``(hop,)`` effective
    upsampling filter ``W``; ``bias``: ``(B, N, 1)`` global (speaker) term; ``source``:
    ``(B, C_e, T)`` sample-rate excitation (:mod:`wavedistill.models.excitation`) that the first
    layer of every network takes beside its audio input, or None. It is not part of the ``N``
    gate channels and is passed unchanged to every slice.
    """

    frames: Tensor | None
    filter: Tensor | None
    bias: Tensor | None
    source: Tensor | None = None

    def channels(self, start: int, stop: int) -> Conditioning:
        """The conditioning of channels ``[start, stop)`` (one layer's ``G``)."""
        return Conditioning(
            self.frames[:, start:stop] if self.frames is not None else None,
            self.filter,
            self.bias[:, start:stop] if self.bias is not None else None,
            self.source,
        )

    def add_to(self, pre: Tensor) -> Tensor:
        """``pre + cond``: ``(B, N, T) -> (B, N, T)`` with ``T = F * hop`` when mel is present.

        The upsampled term is never materialised on its own: ``addcmul`` broadcasts
        ``frames (B, N, F, 1) * filter (hop,)`` straight into the sum.
        """
        out = pre
        if self.frames is not None:
            _check_frames(pre, self.frames, self.filter)
            assert self.filter is not None  # checked just above
            if torch.jit.is_tracing() or torch.compiler.is_exporting():
                # exporters know no custom autograd function: the same sum in plain ops
                up = self.frames.unsqueeze(-1) * self.filter.to(self.frames.dtype)
                out = pre + up.reshape(pre.shape).to(pre.dtype)
            else:
                out = _AddUpsampled.apply(pre, self.frames, self.filter)
        if self.bias is not None:
            out = out + self.bias
        return out


class ConditioningUpsampler(nn.Module):
    """Linear, channel-shared upsampler: a stack of non-overlapping transposed convolutions with
    kernel = stride = factor, one filter per stage for all channels, no bias.

    ``forward``: ``(B, C, F) -> (B, C, F * hop)`` with ``hop = prod(factors)``; output samples
    ``[f * hop, (f + 1) * hop)`` depend on input frame ``f`` only. Filters start at 1 (repetition).
    """

    def __init__(self, factors: Sequence[int]):
        super().__init__()
        self.factors = [int(f) for f in factors]
        self.stages = nn.ParameterList(nn.Parameter(torch.ones(f)) for f in self.factors)

    @property
    def hop(self) -> int:
        return math.prod(self.factors)

    def filter(self) -> Tensor:
        """The collapsed filter ``W = w_1 (x) ... (x) w_n``: ``(hop,)``."""
        W = self.stages[0]
        for w in self.stages[1:]:
            W = torch.outer(W, w).flatten()
        return W

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, F) -> (B, C, F * hop)``."""
        return (x.unsqueeze(-1) * self.filter()).flatten(-2)


class Conditioner(nn.Module):
    """Frame-rate conditioning of every layer of a stack: mel, speaker -> :class:`Conditioning`.

    mel ``(B, n_mels, F)`` -> optional context conv over ``+-context`` frames (``n_mels -> n_mels``,
    linear, zero padding at the edges) -> 1x1 projection ``n_mels -> out_channels`` (all layers at
    once, no bias: a bias would be shaped by the upsampling filter; the layers' convs have biases).
    speaker ``(B,)`` -> embedding ``speaker_dim`` -> linear ``-> out_channels``, added to every
    sample. ``n_mels = 0`` and ``num_speakers = 0`` give an unconditional model (``None``).
    """

    def __init__(
        self,
        out_channels: int,
        n_mels: int = 0,
        upsample_factors: Sequence[int] = (),
        context: int = 1,
        num_speakers: int = 0,
        speaker_dim: int = 16,
    ):
        super().__init__()
        self.out_channels = out_channels
        self.n_mels = n_mels
        self.num_speakers = num_speakers
        self.context: nn.Conv1d | None = None
        self.projection: nn.Conv1d | None = None
        self.upsampler: ConditioningUpsampler | None = None
        if n_mels > 0:
            if context > 0:
                self.context = nn.Conv1d(
                    n_mels, n_mels, 2 * context + 1, padding=context, bias=False
                )
            self.projection = nn.Conv1d(n_mels, out_channels, 1, bias=False)
            self.upsampler = ConditioningUpsampler(upsample_factors)
        self.speaker_embedding: nn.Embedding | None = None
        self.speaker_projection: nn.Linear | None = None
        if num_speakers > 0:
            self.speaker_embedding = nn.Embedding(num_speakers, speaker_dim)
            self.speaker_projection = nn.Linear(speaker_dim, out_channels, bias=False)

    @property
    def hop(self) -> int | None:
        return self.upsampler.hop if self.upsampler is not None else None

    def project(self, mel: Tensor) -> Tensor:
        """Frame-rate projection ``(B, n_mels, F) -> (B, out_channels, F)``."""
        if self.projection is None:
            raise ValueError("this model is not conditioned on mel")
        if self.context is not None:
            mel = self.context(mel)
        return self.projection(mel)

    def forward(
        self, mel: Tensor | None = None, speaker: Tensor | None = None
    ) -> Conditioning | None:
        """``mel (B, n_mels, F)``, ``speaker (B,)`` int64 -> :class:`Conditioning` or ``None``."""
        frames = filt = bias = None
        if self.projection is not None and self.upsampler is not None:  # both or neither
            if mel is None:
                raise ValueError("this model is conditioned on mel; mel is missing")
            frames = self.project(mel)
            filt = self.upsampler.filter()
        if self.speaker_embedding is not None and self.speaker_projection is not None:
            if speaker is None:
                raise ValueError("this model is conditioned on a speaker; speaker is missing")
            bias = self.speaker_projection(self.speaker_embedding(speaker)).unsqueeze(-1)
        if frames is None and bias is None:
            return None
        return Conditioning(frames, filt, bias)


def shift_right(x: Tensor) -> Tensor:
    """``(B, T) -> (B, T)``: ``x_{t-1}`` at ``t``, zero at ``t = 0`` (the autoregressive input
    of a flow)."""
    return F.pad(x[..., :-1], (1, 0))
