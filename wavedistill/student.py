"""The IAF student: a whole clip in one parallel pass (IAF direction), the collapsed per-step
affine map, its exact sequential inverse, and fast CPU synthesis.

Flows. ``K`` flows (``student.flow_layers``), each a WaveNet without skip connections: input
1x1 conv ``1 -> C``, a residual-only stack of gated blocks (``C`` residual, ``2C`` gate channels,
dilations ``2 ** (i % student.dilation_cycle)``), ReLU, 1x1 conv ``C -> 2`` giving
``(mu^k, log s^k)``. Flow ``k`` reads the previous flow's output shifted right by one sample, so
its parameters at ``t`` depend on ``x^(k-1)_<t`` only, and maps ``x^k = x^(k-1) * s^k + mu^k``
(``x^0 = z``, noise). Every flow sees the same mel (and speaker) through one frame-rate
:class:`~wavedistill.networks.Conditioner` that projects the mel to all layers of all flows at
once.

Collapse. Composing the flows gives one affine map per step,
``x_t = z_t * s_tot,t + mu_tot,t`` with ``log s_tot = sum_k log s^k`` and
``mu_tot <- mu_tot * s^k + mu^k`` folded flow by flow; ``(mu_tot,t, s_tot,t)`` depend on
``z_<t`` only, so ``p_S(x_t | z_<t)`` is the noise distribution (logistic or Gaussian) moved
to ``mu_tot,t`` and scaled by ``s_tot,t``, and ``log |det dx/dz| = sum_t log s_tot,t``.

Initialisation. Each flow's last 1x1 conv starts with small weights (std 0.01), a zero
``mu`` bias and a ``log s`` bias of ``log(student.initial_scale) / K``, so every flow starts as
a near-constant affine map and the collapsed map as ``x ~ initial_scale * z``. Why: the
collapsed scale is a product of ``K`` scales, so random log-scales of order one would multiply
into a total scale spanning orders of magnitude across steps, and unit noise lies far outside
[-1, 1] where the teacher has almost no mass; either makes the first KL and power-loss
gradients huge. The weights are small but not zero, so every layer receives a gradient from
the first step.

Fast synthesis. :meth:`IAFStudent.synthesize` runs the flows through :func:`fused_flow`, an
inference-only evaluation of the same weights arranged for CPU speed, a whole batch in every
matrix product (see its docstring); it equals :meth:`IAFStudent.forward` to float tolerance,
and a batched clip equals the clip alone (tested).

Shapes: noise and audio ``(B, T)``; mel ``(B, n_mels, F)`` normalised with ``T = F * hop``;
speaker ``(B,)`` int64.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavedistill.config import Config, StudentConfig
from wavedistill.errors import UserError
from wavedistill.networks import (
    Conditioner,
    Conditioning,
    WaveNetStack,
    check_speaker_ids,
    count_parameters,
    dilation_cycle,
)

# Entropy of the unit noise distribution in nats: a logistic with scale s has entropy
# log s + 2, a Gaussian with standard deviation s has log s + log(2 pi e) / 2.
NOISE_ENTROPY = {"logistic": 2.0, "gaussian": 0.5 * math.log(2.0 * math.pi * math.e)}
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# std of the flows' last layer at initialisation (module docstring: near identity, not zero)
_OUTPUT_INIT_STD = 0.01


def sample_noise(shape: Sequence[int], noise: str, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Unit logistic (``log u - log(1 - u)``) or standard normal (Box-Muller) draws, float32.

    Both are built from uniform draws, a fixed number per sample (one, or two for Gaussian
    noise), so drawing a clip's noise in pieces gives the same noise as drawing it at once:
    streamed and chunked synthesis equal one-shot synthesis for the same seed (``randn``
    does not have this property)."""
    tiny = torch.finfo(torch.float32).tiny  # rand can return exactly 0: keep logs finite
    if noise == "gaussian":
        u = torch.rand((*shape, 2), generator=generator, device=device)
        radius = torch.sqrt(-2.0 * torch.log(u[..., 0].clamp_min(tiny)))
        return radius * torch.cos((2.0 * math.pi) * u[..., 1])
    u = torch.rand(tuple(shape), generator=generator, device=device).clamp_min(tiny)
    return torch.log(u) - torch.log1p(-u)


def noise_log_density(z: Tensor, noise: str) -> Tensor:
    """Log-density of the unit noise distribution, elementwise."""
    if noise == "gaussian":
        return -0.5 * z * z - _LOG_SQRT_2PI
    return F.logsigmoid(z) + F.logsigmoid(-z)


def shift_right(x: Tensor) -> Tensor:
    """``(B, T) -> (B, T)``: ``x_{t-1}`` at ``t``, zero at ``t = 0``."""
    return F.pad(x[..., :-1], (1, 0))


class IAFFlow(nn.Module):
    """One flow: ``x^(k-1) (B, T)`` -> ``(mu^k, log s^k)``, each ``(B, T)``, where step ``t``
    depends on ``x^(k-1)_<t`` only. Log-scales are floored at ``log_scale_min``."""

    def __init__(self, layers: int, channels: int, kernel_size: int, cycle: int,
                 log_scale_min: float, initial_log_scale: float = 0.0):
        super().__init__()
        self.log_scale_min = log_scale_min
        self.input_conv = nn.Conv1d(1, channels, 1)
        self.stack = WaveNetStack(channels, 2 * channels, 0, kernel_size,
                                  dilation_cycle(layers, cycle))
        self.output = nn.Conv1d(channels, 2, 1)
        nn.init.normal_(self.output.weight, std=_OUTPUT_INIT_STD)
        with torch.no_grad():
            self.output.bias.copy_(torch.tensor([0.0, initial_log_scale]))

    @property
    def receptive_field(self) -> int:
        """Past input samples one step's parameters depend on (``t - rf ... t - 1``)."""
        return self.stack.receptive_field

    def forward(self, x: Tensor, cond: Conditioning | None) -> tuple[Tensor, Tensor]:
        h = self.input_conv(shift_right(x).unsqueeze(1))  # (B, C, T)
        h, _ = self.stack(h, cond)
        mu, log_s = self.output(F.relu(h)).unbind(1)
        return mu, log_s.clamp_min(self.log_scale_min)


class IAFStudent(nn.Module):
    """Parallel WaveNet / ClariNet student (module docstring). Attributes: ``flows``,
    ``conditioner``, ``noise``, ``receptive_field``, ``num_parameters``, ``hop``."""

    def __init__(self, n_mels: int, flow_layers: Sequence[int], channels: int = 64,
                 kernel_size: int = 3, cycle: int = 10, noise: str = "logistic",
                 upsample_factors: Sequence[int] = (200,), conditioning_context: int = 1,
                 num_speakers: int = 0, speaker_dim: int = 16, log_scale_min: float = -9.0,
                 synthesis_tile: int = 2048,
                 initial_scale: float = StudentConfig.initial_scale):
        super().__init__()
        if noise not in NOISE_ENTROPY:
            raise UserError(f"student.noise is {noise!r}; expected one of logistic, gaussian")
        self.noise = noise
        self.n_mels = n_mels
        self.num_speakers = num_speakers
        self.conditioning_context = conditioning_context
        self.synthesis_tile = synthesis_tile
        share = math.log(initial_scale) / len(flow_layers)
        self.flows = nn.ModuleList(IAFFlow(n, channels, kernel_size, cycle, log_scale_min, share)
                                   for n in flow_layers)
        self.conditioner = Conditioner(sum(f.stack.conditioning_channels for f in self.flows),
                                       n_mels, upsample_factors, conditioning_context,
                                       num_speakers, speaker_dim)

    @classmethod
    def from_config(cls, cfg: Config) -> IAFStudent:
        s = cfg.student
        return cls(cfg.audio.n_mels, s.flow_layers, s.channels, s.kernel_size, s.dilation_cycle,
                   s.noise, s.upsample_factors, s.conditioning_context, s.num_speakers,
                   s.speaker_dim, s.log_scale_min, s.synthesis_tile, s.initial_scale)

    @property
    def hop(self) -> int:
        return self.conditioner.hop

    @property
    def receptive_field(self) -> int:
        """Noise samples one output sample depends on: ``x_t`` sees ``z_{t - rf + 1} ... z_t``
        with ``rf = 1 + sum_k rf_k`` (each flow adds its own window before ``t``)."""
        return 1 + sum(f.receptive_field for f in self.flows)

    @property
    def num_parameters(self) -> int:
        return count_parameters(self)

    # -- conditioning ------------------------------------------------------------------------

    def conditioning(self, mel: Tensor, speaker: Tensor | None = None) -> Conditioning:
        """Frame-rate conditioning of every layer of every flow, checked against the model."""
        if mel is None or mel.dim() != 3 or mel.shape[1] != self.n_mels:
            shape = None if mel is None else tuple(mel.shape)
            raise UserError(f"mel must be (batch, {self.n_mels}, frames) to match "
                            f"audio.n_mels, got {shape}")
        if self.num_speakers > 0:
            if speaker is None:
                raise UserError(f"this student has student.num_speakers={self.num_speakers}; "
                                "no speaker id was given")
            check_speaker_ids(speaker, self.num_speakers, "student.num_speakers")
        return self.conditioner(mel, speaker if self.num_speakers > 0 else None)

    def _per_flow(self, cond: Conditioning) -> list[Conditioning]:
        """Split the conditioning of all flows into one per flow (its layers' channels)."""
        out, start = [], 0
        for flow in self.flows:
            stop = start + flow.stack.conditioning_channels
            out.append(cond.channels(start, stop))
            start = stop
        return out

    def _check_length(self, samples: int, mel: Tensor) -> None:
        if samples != mel.shape[-1] * self.hop:
            raise UserError(f"noise/audio has {samples} samples but {mel.shape[-1]} mel frames "
                            f"of hop {self.hop} need {mel.shape[-1] * self.hop}")

    # -- the IAF direction: noise -> audio in one pass -------------------------------------

    def forward(self, z: Tensor, mel: Tensor, speaker: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Noise ``z (B, T)`` -> ``(x, mu_tot, log_s_tot)``, each ``(B, T)``, with
        ``x = z * exp(log_s_tot) + mu_tot`` and step ``t`` of ``mu_tot``/``log_s_tot``
        depending on ``z_<t`` only. Differentiable (the training path)."""
        self._check_length(z.shape[-1], mel)
        return self._run_flows(z, self.conditioning(mel, speaker))

    def _run_flows(self, z: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor, Tensor]:
        x = z
        mu_tot = torch.zeros_like(z)
        log_s_tot = torch.zeros_like(z)
        for flow, flow_cond in zip(self.flows, self._per_flow(cond), strict=True):
            mu, log_s = flow(x, flow_cond)
            scale = torch.exp(log_s)
            x = x * scale + mu
            mu_tot = mu_tot * scale + mu
            log_s_tot = log_s_tot + log_s
        return x, mu_tot, log_s_tot

    def sample_noise(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
        """Unit noise of the student's kind (``student.noise``), float32."""
        if device is None:
            device = next(self.parameters()).device
        return sample_noise(shape, self.noise, generator, device)

    def noise_log_density(self, z: Tensor) -> Tensor:
        """Log-density of the student's unit noise, elementwise."""
        return noise_log_density(z, self.noise)

    @torch.inference_mode()
    def synthesize(self, mel: Tensor, speaker: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Audio ``(B, F * hop)`` in [-1, 1] from mel ``(B, n_mels, F)`` in one pass."""
        z = self.sample_noise((mel.shape[0], mel.shape[-1] * self.hop), generator, mel.device)
        return self.synthesize_from_noise(z, mel, speaker)

    @torch.inference_mode()
    def synthesize_from_noise(self, z: Tensor, mel: Tensor, speaker: Tensor | None = None
                              ) -> Tensor:
        """Like :meth:`synthesize` with given noise ``z (B, T)``: the audio clamped to [-1, 1]
        (the unclamped ``x`` of :meth:`forward`, computed by the fused path)."""
        self._check_length(z.shape[-1], mel)
        return self._fused_run(z, self.conditioning(mel, speaker)).clamp_(-1.0, 1.0)

    def _fused_run(self, z: Tensor, cond: Conditioning) -> Tensor:
        # the model's dtype, or autocast's (then the fused layers hold weights cast to it)
        dtype = self.flows[0].output.weight.dtype
        if torch.is_autocast_enabled(z.device.type):
            dtype = torch.get_autocast_dtype(z.device.type)
        tile = self._tile(z, dtype)
        x = z.to(dtype)
        for flow, flow_cond in zip(self.flows, self._per_flow(cond), strict=True):
            mu, log_s = fused_flow(flow, x, flow_cond, tile)
            x = torch.addcmul(mu, x, log_s.exp_())
        return x

    def _tile(self, z: Tensor, dtype: torch.dtype) -> int:
        """Time steps per tile of the fused path for noise ``z (B, T)`` computed in ``dtype``,
        in whole frames: on a CPU, ``synthesis_tile`` float32 samples of the whole batch (steps
        times clips) per thread, as many more as a narrower dtype fits in the same bytes (each
        thread works on its share of a tile, whose activations should stay in its core's
        cache); the whole clip elsewhere (a GPU wants few, large kernels)."""
        B, T = z.shape
        if z.device.type != "cpu":
            return T
        samples = self.synthesis_tile * torch.get_num_threads() * 4 // dtype.itemsize
        return max(1, samples // (B * self.hop)) * self.hop

    @torch.inference_mode()
    def synthesize_chunked(self, mel: Tensor, chunk_frames: int, speaker: Tensor | None = None,
                           generator: torch.Generator | None = None) -> Tensor:
        """:meth:`synthesize` in chunks of ``chunk_frames`` frames, equal to the one-shot result
        for the same generator state (to float tolerance).

        The noise of the whole clip is drawn first (as one-shot does); each chunk is then
        computed with ``ceil((receptive_field - 1) / hop)`` frames of left context of the same
        noise and mel (plus the conditioner's mel context on both sides), and only its own
        samples are kept. Activations scale with ``chunk_frames`` plus the context, not with the
        clip. Returns ``(B, F * hop)``.
        """
        if chunk_frames < 1:
            raise UserError(f"chunk_frames must be at least 1, got {chunk_frames}")
        hop, total = self.hop, mel.shape[-1]
        z = self.sample_noise((mel.shape[0], total * hop), generator, mel.device)
        pieces = [self.synthesize_span(z, mel, f0, min(total, f0 + chunk_frames), speaker)
                  for f0 in range(0, total, chunk_frames)]
        return torch.cat(pieces, dim=1)

    @property
    def context_frames(self) -> int:
        """Frames of past noise and mel that samples of a frame depend on (receptive field)."""
        return math.ceil((self.receptive_field - 1) / self.hop)

    @torch.inference_mode()
    def synthesize_span(self, z: Tensor, mel: Tensor, f0: int, f1: int,
                        speaker: Tensor | None = None) -> Tensor:
        """The audio of frames ``[f0, f1)``, ``(B, (f1 - f0) * hop)`` clamped to [-1, 1],
        equal to those samples of the whole clip's synthesis from the same noise ``z (B, T)``
        and mel ``(B, n_mels, F)`` (``T = F * hop``), where ``mel`` ends at the clip's end or
        holds at least ``conditioning_context`` frames past ``f1``. Computed from
        :attr:`context_frames` frames of left context only."""
        hop = self.hop
        start = max(0, f0 - self.context_frames)
        cond = self._chunk_conditioning(mel, speaker, start, f1)
        x = self._fused_run(z[:, start * hop:f1 * hop], cond)
        return x[:, (f0 - start) * hop:].clamp_(-1.0, 1.0)

    def _chunk_conditioning(self, mel: Tensor, speaker: Tensor | None, start: int, stop: int
                            ) -> Conditioning:
        """Conditioning of frames ``[start, stop)`` exactly as the whole clip's: the mel is
        read with ``conditioning_context`` extra frames on each side, then cropped."""
        c = self.conditioning_context
        lo, hi = max(0, start - c), min(mel.shape[-1], stop + c)
        cond = self.conditioning(mel[..., lo:hi], speaker)
        frames = cond.frames[..., start - lo:stop - lo]
        return Conditioning(frames, cond.filter, cond.bias)

    # -- the other direction: audio -> noise, sequential ------------------------------------

    @torch.no_grad()
    def inverse(self, x: Tensor, mel: Tensor, speaker: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """Exact inverse: audio ``x (B, T)`` -> ``(z (B, T), log_det (B,))`` with
        ``log_det = log |det dz/dx| = -sum_t log s_tot,t``. Sequential: ``T`` passes
        (for tests and scoring short clips). Each step divides by ``s_tot,t``, so rounding
        errors of earlier steps grow by about ``1 / s_tot`` per step: score in float64
        (``student.double()``) when the scales are small."""
        z, log_s_tot = self._invert(x, mel, speaker)
        return z, -log_s_tot.sum(-1)

    @torch.no_grad()
    def log_prob(self, x: Tensor, mel: Tensor, speaker: Tensor | None = None) -> Tensor:
        """``log p_S(x_t | x_<t, c)`` in nats (continuous density) for every step: ``(B, T)``.
        Through :meth:`inverse`, so for short clips."""
        z, log_s_tot = self._invert(x, mel, speaker)
        return self.noise_log_density(z) - log_s_tot

    def _invert(self, x: Tensor, mel: Tensor, speaker: Tensor | None) -> tuple[Tensor, Tensor]:
        """Solve ``x = z * s_tot(z) + mu_tot(z)`` for ``z`` one step at a time.

        Step ``t`` of ``(mu_tot, s_tot)`` depends on ``z_<t`` only, so pass ``t`` (with
        ``z_<t`` solved and later steps zero) gives ``z_t = (x_t - mu_tot,t) / s_tot,t``
        exactly. Later steps stay zero rather than provisional values: a provisional value may
        overflow and poison the arithmetic. Returns ``(z, log_s_tot)``, each ``(B, T)``.
        """
        self._check_length(x.shape[-1], mel)
        cond = self.conditioning(mel, speaker)
        z = torch.zeros_like(x)
        log_s_tot = torch.zeros_like(x)
        for t in range(x.shape[-1]):
            _, mu, log_s = self._run_flows(z, cond)
            z[:, t] = (x[:, t] - mu[:, t]) * torch.exp(-log_s[:, t])
            log_s_tot[:, t] = log_s[:, t]
        return z, log_s_tot


# -- fused inference ---------------------------------------------------------------------------


def fused_flow(flow: IAFFlow, x: Tensor, cond: Conditioning | None, tile: int
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
    _input_layer(flow, x, h[pad:])
    inputs = _TileInputs(cond, layers, B, min(tile, T), x)
    gate = x.new_empty(min(tile, T) * B, G // 2)
    for j, layer in enumerate(layers):
        inputs.start_layer(j, layer)
        for t0 in reversed(range(0, T, tile)):
            n = min(tile, T - t0)
            c = inputs.start_tile(t0, n)
            layer.run(h, pad + t0, n, inputs.col, inputs.weight, c, gate)
    out = F.linear(h[pad:].view(T * B, C).relu_(), flow.output.weight[:, :, 0],
                   flow.output.bias)
    mu, log_s = out.view(T, B, 2).permute(2, 1, 0).contiguous()
    return mu, log_s.clamp_min_(flow.log_scale_min)


def _input_layer(flow: IAFFlow, x: Tensor, out: Tensor) -> None:
    """``out (T, B, C) = input_conv(shift_right(x))``, time-major, for the clips ``x (B, T)``."""
    w, b = flow.input_conv.weight[:, 0, 0], flow.input_conv.bias  # (C,), (C,)
    torch.addcmul(b, shift_right(x).t().unsqueeze(-1), w, out=out)


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

    def __init__(self, cond: Conditioning | None, layers: list[_FusedLayer], B: int, n: int,
                 like: Tensor):
        G, kC = layers[0].conv.shape
        self.B, self.kC = B, kC
        self.frames = self.filter = self.speaker = None
        if cond is not None:
            scale = torch.ones(G, dtype=like.dtype, device=like.device)
            scale[:G // 2] = 2.0
            if cond.frames is not None:  # (L, F, B, G)
                frames = cond.frames.to(like.dtype).view(B, len(layers), G, -1)
                self.frames = (frames * scale[:, None]).permute(1, 3, 0, 2).contiguous()
                self.filter = cond.filter.to(like.dtype)
            if cond.bias is not None:  # (L, B, G)
                self.speaker = (cond.bias.to(like.dtype).view(B, len(layers), G) * scale
                                ).transpose(0, 1)
        self.in_product = _conditioning_in_product(like.device)
        frame_cols = B * (n // self.hop) if self.frames is not None else 0
        width = frame_cols + B * (self.speaker is not None) if self.in_product else 0
        self.col = like.new_zeros(n * B, kC + width)
        self.weight = like.new_zeros(G, kC + width)
        self.c = None if self.in_product else like.new_empty(n * B, G)
        if self.in_product:
            cols = self.col.view(n, B, kC + width)
            t = torch.arange(n, device=like.device)[:, None]
            b = torch.arange(B, device=like.device)[None, :]
            if self.frames is not None:
                cols[t, b, kC + (t // self.hop) * B + b] = self.filter[t % self.hop]
            if self.speaker is not None:
                cols[:, b[0], kC + frame_cols + b[0]] = 1.0
            self.speaker_cols = slice(kC + frame_cols, kC + width)

    @property
    def hop(self) -> int:
        return self.filter.shape[0]

    def start_layer(self, j: int, layer: _FusedLayer) -> None:
        self.j, self.bias = j, layer.bias
        self.weight[:, :self.kC] = layer.conv
        if self.speaker is not None:
            if self.in_product:
                self.weight[:, self.speaker_cols] = self.speaker[j].t()
            else:
                self.bias = layer.bias + self.speaker[j]  # (B, G)

    def start_tile(self, t0: int, n: int) -> Tensor | None:
        """Conditioning of steps ``[t0, t0 + n)``: written into ``weight`` and None, or the
        upsampled ``c (n B, G)`` plus bias."""
        if self.frames is None:
            return None if self.in_product else self.c[:n * self.B].copy_(
                self.bias.expand(n, self.B, -1).reshape(n * self.B, -1))
        f0, nf = t0 // self.hop, n // self.hop
        frames = self.frames[self.j, f0:f0 + nf]  # (nf, B, G)
        if self.in_product:
            # columns past this tile's frames keep older values: their col entries are zero
            self.weight[:, self.kC:self.kC + nf * self.B] = frames.reshape(nf * self.B, -1).t()
            return None
        c = self.c[:n * self.B]
        torch.addcmul(self.bias, frames[:, None], self.filter[:, None, None],
                      out=c.view(nf, self.hop, self.B, -1))
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
        scale[:G // 2] = 2.0
        self.conv = (W * scale).transpose(1, 2).reshape(G, k * C).contiguous()
        self.bias = block.dilated.bias.detach().to(dtype) * scale[:, 0, 0]
        self.out = (-block.output.weight.detach()[:, :, 0]).to(dtype).contiguous()
        self.out_bias = block.output.bias.detach().to(dtype, copy=True)
        self.dilation = block.dilated.dilation[0]

    def run(self, h: Tensor, a: int, n: int, col: Tensor, weight: Tensor, c: Tensor | None,
            gate: Tensor) -> None:
        """Update steps ``[a, a + n)`` of the residual buffer ``h (pad + T, B, C)`` in place,
        with the tile's ``col``, ``weight`` and ``c`` from :class:`_TileInputs`; ``gate`` is
        scratch space of at least ``n B`` rows."""
        _, B, C = h.shape
        rows, d = n * B, self.dilation
        kC = self.conv.shape[1]
        x = col[:rows]
        # tap j of step t is step t - (k - 1 - j) d: one strided view of the buffer
        taps = h.as_strided((rows, kC // C, C), (C, d * B * C, 1),
                            h.storage_offset() + (a - (kC // C - 1) * d) * B * C)
        x[:, :kC].view(rows, -1, C).copy_(taps)
        p = _linear_sigmoid(x, weight, self.bias if c is None else None, c)  # (rows, G)
        half = p.shape[1] // 2
        g = torch.addcmul(p[:, half:], p[:, :half], p[:, half:], value=-2.0, out=gate[:rows])
        stream = h[a:a + n].view(rows, C)
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
    key = (dtype, *((p.data_ptr(), p._version, p.dtype, p.device)
                    for p in flow.stack.parameters()))
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
    return torch.addmm(b if c is None else c, x, w.t()).sigmoid_()


def _linear_add(x: Tensor, w: Tensor, b: Tensor, other: Tensor) -> Tensor:
    """``x (N, K) @ w.T (K, M) + b (M,) + other (N, M)``, a new ``(N, M)``."""
    if _onednn(x):
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
    return torch.addmm(other, x, w.t()).add_(b)
