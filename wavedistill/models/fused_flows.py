"""The student's flows evaluated fast for inference: the same weights and arithmetic as
:meth:`~wavedistill.models.iaf_flow.IAFFlow.forward`, arranged for CPU matrix products, a
whole batch in every product (see :func:`fused_flow`). :meth:`IAFStudent.synthesize` and its
chunked and streamed forms run through it; it equals the module path to float tolerance (tested).
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from wavedistill.models.networks import Conditioning, shift_right

if TYPE_CHECKING:
    from wavedistill.models.iaf_flow import IAFFlow


def fused_flow(
    flow: IAFFlow, x: Tensor, cond: Conditioning | None, tile: int
) -> tuple[Tensor, Tensor]:
    """:meth:`IAFFlow.forward` for inference, arranged for CPU speed at any batch size.

    ``x (B, T)`` -> ``(mu, log_s)``, each ``(B, T)`` in ``x``'s dtype; ``tile`` (a multiple
    of the hop when mel-conditioned) is the number of time steps one step of the loop covers.

    The same arithmetic as the module path, rearranged:

    - The residual stream is one time-major buffer ``(pad + T, B, C)``: the clips of the batch
      lie side by side at every time step, so ``n`` steps are ``n B`` contiguous rows and every
      matrix product covers the whole batch at once.
    - Each dilated conv is ONE product ``(n B, k C + X) @ (k C + X, G)``: the ``k`` taps of the
      tile's rows copied side by side from the buffer (one strided copy), then ``X`` columns
      that carry the conditioning into the product (:class:`_TileInputs`), so the product's own
      epilogue can apply the ``sigmoid``.
    - ``tanh(a) = 2 sigmoid(2a) - 1``: the ``a`` half of the conv weights, bias and conditioning
      is doubled, one ``sigmoid`` covers all ``G`` channels (the CPU ``tanh`` kernel is several
      times slower), and one fused multiply-add forms
      ``sigmoid(b) - 2 sigmoid(2a) sigmoid(b) = -tanh(a) sigmoid(b)``; the sign is folded into
      the residual 1x1 weights.
    - Tiles run right to left, so the residual update can overwrite the buffer in place: a tile
      reads its layer input from ``t - (k - 1) d`` on, where only tiles to its right have been
      updated. A tile's activations stay in cache.
    - Weights are rearranged once per parameter version (:func:`_fused_layers`), and products
      go through oneDNN on a CPU (:func:`_linear_sigmoid`, :func:`_linear_add`).
    """
    B, T = x.shape
    layers = _fused_layers(flow, x.dtype)
    C, G = flow.input_conv.out_channels, flow.stack.gate_channels
    pad = max(b.dilated.left_padding for b in flow.stack.blocks)
    h = x.new_empty(pad + T, B, C)
    h[:pad] = 0.0  # the causal left padding; the input layer writes the rest
    _input_layer(flow, x, h[pad:], cond)
    inputs = _TileInputs(cond, layers, B, min(tile, T), x)
    gate = x.new_empty(min(tile, T) * B, G // 2)
    for j, layer in enumerate(layers):
        inputs.start_layer(j, layer)
        for t0 in reversed(range(0, T, tile)):
            n = min(tile, T - t0)
            c = inputs.start_tile(t0, n)
            layer.run(h, pad + t0, n, inputs.col, inputs.weight, c, gate)
    out = F.linear(h[pad:].view(T * B, C).relu_(), flow.output.weight[:, :, 0], flow.output.bias)
    mu, log_s = out.view(T, B, 2).permute(2, 1, 0).contiguous()
    return mu, log_s.clamp_min_(flow.log_scale_min)


def _input_layer(flow: IAFFlow, x: Tensor, out: Tensor, cond: Conditioning | None) -> None:
    """``out (T, B, C) = input_conv(shift_right(x) | excitation)``, time-major, for the clips
    ``x (B, T)``; the excitation ``cond.source (B, C_e, T)`` (unshifted) when there is one."""
    w, b = flow.input_conv.weight[:, 0, 0], flow.input_conv.bias  # (C,), (C,)
    assert b is not None  # a Conv1d has a bias by default
    torch.addcmul(b, shift_right(x).t().unsqueeze(-1), w, out=out)
    source = cond.source if cond is not None else None
    if source is not None:
        T, B, C = out.shape
        w_e = flow.input_conv.weight[:, 1:, 0]  # (C, C_e)
        src = source.to(x.dtype).permute(2, 0, 1).reshape(T * B, -1)  # (T B, C_e)
        out.view(T * B, C).addmm_(src, w_e.t())


class _TileInputs:
    """Inputs of one flow's dilated-conv products in :func:`fused_flow`, for tiles of up to
    ``n`` steps of ``B`` clips: ``col (n B, k C + X)``, whose first ``k C`` columns the layer
    fills with its taps, and ``weight (G, k C + X)``, the layer's conv weights then ``X``
    conditioning columns (``a`` halves doubled throughout).

    On a CPU the conditioning rides in the product: ``nf B`` columns (``nf = n / hop`` frames
    per tile) hold the upsampling filter at each row's frame and clip, weighted by that frame's
    projection; ``B`` more hold 1 at each row's clip, weighted by the speaker term. Elsewhere a
    tile is a whole clip (too many frames for columns), so ``X = 0`` and :meth:`start_tile`
    upsamples the conditioning into ``c (n B, G)`` instead, bias included."""

    def __init__(
        self, cond: Conditioning | None, layers: list[_FusedLayer], B: int, n: int, like: Tensor
    ):
        G, kC = layers[0].conv.shape
        self.B, self.kC = B, kC
        self.frames: Tensor | None = None
        self.filter: Tensor | None = None
        self.speaker: Tensor | None = None
        if cond is not None:
            scale = torch.ones(G, dtype=like.dtype, device=like.device)
            scale[: G // 2] = 2.0
            if cond.frames is not None and cond.filter is not None:  # (L, F, B, G)
                frames = cond.frames.to(like.dtype).view(B, len(layers), G, -1)
                self.frames = (frames * scale[:, None]).permute(1, 3, 0, 2).contiguous()
                self.filter = cond.filter.to(like.dtype)
            if cond.bias is not None:  # (L, B, G)
                self.speaker = (cond.bias.to(like.dtype).view(B, len(layers), G) * scale).transpose(
                    0, 1
                )
        self.in_product = _conditioning_in_product(like.device)
        frame_cols = B * (n // self.hop) if self.frames is not None else 0
        width = frame_cols + B * (self.speaker is not None) if self.in_product else 0
        self.col = like.new_zeros(n * B, kC + width)
        self.weight = like.new_zeros(G, kC + width)
        self.c: Tensor | None = None if self.in_product else like.new_empty(n * B, G)
        if self.in_product:
            cols = self.col.view(n, B, kC + width)
            t = torch.arange(n, device=like.device)[:, None]
            b = torch.arange(B, device=like.device)[None, :]
            if self.frames is not None and self.filter is not None:
                cols[t, b, kC + (t // self.hop) * B + b] = self.filter[t % self.hop]
            if self.speaker is not None:
                cols[:, b[0], kC + frame_cols + b[0]] = 1.0
            self.speaker_cols = slice(kC + frame_cols, kC + width)

    @property
    def hop(self) -> int:
        if self.filter is None:
            raise ValueError("no mel conditioning, hence no hop")
        return self.filter.shape[0]

    def start_layer(self, j: int, layer: _FusedLayer) -> None:
        self.j, self.bias = j, layer.bias
        self.weight[:, : self.kC] = layer.conv
        if self.speaker is not None:
            if self.in_product:
                self.weight[:, self.speaker_cols] = self.speaker[j].t()
            else:
                self.bias = layer.bias + self.speaker[j]  # (B, G)

    def start_tile(self, t0: int, n: int) -> Tensor | None:
        """Conditioning of steps ``[t0, t0 + n)``: written into ``weight`` and None, or the
        upsampled ``c (n B, G)`` plus bias."""
        if self.frames is None:  # self.c is None exactly when the conditioning is in_product
            return (
                None
                if self.c is None
                else self.c[: n * self.B].copy_(
                    self.bias.expand(n, self.B, -1).reshape(n * self.B, -1)
                )
            )
        f0, nf = t0 // self.hop, n // self.hop
        frames = self.frames[self.j, f0 : f0 + nf]  # (nf, B, G)
        if self.in_product:
            # columns past this tile's frames keep older values: their col entries are zero
            self.weight[:, self.kC : self.kC + nf * self.B] = frames.reshape(nf * self.B, -1).t()
            return None
        assert self.c is not None and self.filter is not None
        c = self.c[: n * self.B]
        torch.addcmul(
            self.bias,
            frames[:, None],
            self.filter[:, None, None],
            out=c.view(nf, self.hop, self.B, -1),
        )
        return c


def _conditioning_in_product(device: torch.device) -> bool:
    """Whether :class:`_TileInputs` puts the conditioning into the product (CPU tiles)."""
    return device.type == "cpu"


class _FusedLayer:
    """One residual block's weights laid out for :func:`fused_flow` (``a`` half doubled):
    ``conv (G, k C)``, the dilated conv's taps side by side (tap ``j`` reads
    ``t - (k - 1 - j) d``); ``bias (G,)``; ``out (C, G/2)``, the residual 1x1 negated (the gate
    yields ``-tanh(a) sigmoid(b)``); ``out_bias (C,)``; ``dilation``."""

    def __init__(self, block, dtype: torch.dtype):
        W = block.dilated.weight.detach().to(dtype)  # (G, C, k)
        G, C, k = W.shape
        scale = torch.ones(G, 1, 1, dtype=W.dtype, device=W.device)
        scale[: G // 2] = 2.0
        self.conv = (W * scale).transpose(1, 2).reshape(G, k * C).contiguous()
        self.bias = block.dilated.bias.detach().to(dtype) * scale[:, 0, 0]
        self.out = (-block.output.weight.detach()[:, :, 0]).to(dtype).contiguous()
        self.out_bias = block.output.bias.detach().to(dtype, copy=True)
        self.dilation = block.dilated.dilation[0]

    def run(
        self, h: Tensor, a: int, n: int, col: Tensor, weight: Tensor, c: Tensor | None, gate: Tensor
    ) -> None:
        """Update steps ``[a, a + n)`` of the residual buffer ``h (pad + T, B, C)`` in place,
        with the tile's ``col``, ``weight`` and ``c`` from :class:`_TileInputs`; ``gate`` is
        scratch space of at least ``n B`` rows."""
        _, B, C = h.shape
        rows, d = n * B, self.dilation
        kC = self.conv.shape[1]
        x = col[:rows]
        # tap j of step t is step t - (k - 1 - j) d: one strided view of the buffer
        taps = h.as_strided(
            (rows, kC // C, C),
            (C, d * B * C, 1),
            h.storage_offset() + (a - (kC // C - 1) * d) * B * C,
        )
        x[:, :kC].view(rows, -1, C).copy_(taps)
        p = _linear_sigmoid(x, weight, self.bias if c is None else None, c)  # (rows, G)
        half = p.shape[1] // 2
        g = torch.addcmul(p[:, half:], p[:, :half], p[:, half:], value=-2.0, out=gate[:rows])
        stream = h[a : a + n].view(rows, C)
        stream.copy_(_linear_add(g, self.out, self.out_bias, stream))


# per flow: the (data_ptr, version, dtype, device) of its stack's parameters and its fused
# layers; weak keys, so a copied or deleted model neither carries nor keeps stale entries
_FUSED_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fused_layers(flow: IAFFlow, dtype: torch.dtype) -> list[_FusedLayer]:
    """The blocks of ``flow`` laid out for :func:`fused_flow` in ``dtype``, rebuilt only when
    ``dtype`` or a parameter changed: new storage, dtype or device (``.to``, assignment), or
    an in-place update, which bumps its version (``load_state_dict``, optimiser steps, edits
    under ``torch.no_grad``). Writes through ``.data`` bypass version counters and would go
    unseen, as by autograd."""
    key = (dtype, *((p.data_ptr(), p._version, p.dtype, p.device) for p in flow.stack.parameters()))
    cached = _FUSED_CACHE.get(flow)
    if cached is None or cached[0] != key:
        cached = (key, [_FusedLayer(block, dtype) for block in flow.stack.blocks])
        _FUSED_CACHE[flow] = cached
    return cached[1]


@functools.cache
def _onednn_linear(dtype: torch.dtype) -> bool:
    """Whether this torch build has oneDNN's linear with fused epilogues for ``dtype``."""
    try:
        one = torch.ones(2, 2, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise.binary(one, one, one, None, "add")
        return bool(torch.equal(out, torch.full_like(one, 3.0)))
    except (AttributeError, RuntimeError):
        return False


def _onednn(x: Tensor) -> bool:
    """Products through oneDNN on a CPU: on the AVX-512 AMD CPU of docs/benchmarks.md its
    float32 kernels run 2.2x the sgemm ``torch.mm`` calls (held to AVX2 they match it), and it
    runs bfloat16 natively; elsewhere ``addmm``."""
    return x.device.type == "cpu" and _onednn_linear(x.dtype)


def _linear_sigmoid(x: Tensor, w: Tensor, b: Tensor | None, c: Tensor | None) -> Tensor:
    """``sigmoid(x (N, K) @ w.T (K, M) + b (M,) + c (N, M))``, a new ``(N, M)``; one of
    ``b``, ``c`` is None."""
    if c is None and _onednn(x):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "sigmoid", [], "")
    added = b if c is None else c
    assert added is not None, "b or c is given"
    return torch.addmm(added, x, w.t()).sigmoid_()


def _linear_add(x: Tensor, w: Tensor, b: Tensor, other: Tensor) -> Tensor:
    """``x (N, K) @ w.T (K, M) + b (M,) + other (N, M)``, a new ``(N, M)``."""
    if _onednn(x):
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
    return torch.addmm(other, x, w.t()).add_(b)
