"""The IAF student: a whole clip in one parallel pass (IAF direction), the collapsed per-step
affine map, its exact sequential inverse, and fast CPU synthesis.

Flows. ``K`` flows (``student.flow_layers``), each a WaveNet without skip connections: input
1x1 conv ``1 -> C``, a residual-only stack of gated blocks (``C`` residual, ``2C`` gate channels,
dilations ``2 ** (i % student.dilation_cycle)``), ReLU, 1x1 conv ``C -> 2`` giving
``(mu^k, log s^k)``. Flow ``k`` reads the previous flow's output shifted right by one sample, so
its parameters at ``t`` depend on ``x^(k-1)_<t`` only, and maps ``x^k = x^(k-1) * s^k + mu^k``
(``x^0 = z``, noise). Every flow sees the same mel (and speaker) through one frame-rate
:class:`~wavedistill.models.networks.Conditioner` that projects the mel to all layers of all
flows at once.

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

Fast synthesis. :meth:`IAFStudent.synthesize` runs the flows through
:func:`~wavedistill.models.fused_flows.fused_flow`, an
inference-only evaluation of the same weights arranged for CPU speed, a whole batch in every
matrix product (see its docstring); it equals :meth:`IAFStudent.forward` to float tolerance,
and a batched clip equals the clip alone (tested).

Shapes: noise and audio ``(B, T)``; mel ``(B, n_mels, F)`` normalised with ``T = F * hop``;
speaker ``(B,)`` int64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from wavedistill.config import Config, StudentConfig
from wavedistill.errors import UserError
from wavedistill.models.excitation import HarmonicSource, build_source
from wavedistill.models.fused_flows import fused_flow
from wavedistill.models.iaf_flow import NOISE_ENTROPY, IAFFlow, noise_log_density, sample_noise
from wavedistill.models.networks import (
    Conditioner,
    Conditioning,
    check_speaker_ids,
    count_parameters,
)


class IAFStudent(nn.Module):
    """Parallel WaveNet / ClariNet student (module docstring). Attributes: ``flows``,
    ``conditioner``, ``noise``, ``receptive_field``, ``num_parameters``, ``hop``."""

    def __init__(
        self,
        n_mels: int,
        flow_layers: Sequence[int],
        channels: int = 64,
        kernel_size: int = 3,
        cycle: int = 10,
        noise: str = "logistic",
        upsample_factors: Sequence[int] = (200,),
        conditioning_context: int = 1,
        num_speakers: int = 0,
        speaker_dim: int = 16,
        log_scale_min: float = -9.0,
        synthesis_tile: int = 2048,
        initial_scale: float = StudentConfig.initial_scale,
        excitation: HarmonicSource | None = None,
    ):
        super().__init__()
        if noise not in NOISE_ENTROPY:
            raise UserError(f"student.noise is {noise!r}; expected one of logistic, gaussian")
        self.noise = noise
        self.n_mels = n_mels
        self.num_speakers = num_speakers
        self.conditioning_context = conditioning_context
        self.synthesis_tile = synthesis_tile
        share = math.log(initial_scale) / len(flow_layers)
        source_channels = excitation.channels if excitation is not None else 0
        # an nn.ModuleList, typed as the flows it holds
        self.flows = cast(
            "Sequence[IAFFlow]",
            nn.ModuleList(
                IAFFlow(n, channels, kernel_size, cycle, log_scale_min, share, source_channels)
                for n in flow_layers
            ),
        )
        self.conditioner = Conditioner(
            sum(f.stack.conditioning_channels for f in self.flows),
            n_mels,
            upsample_factors,
            conditioning_context,
            num_speakers,
            speaker_dim,
        )
        # the teacher's pitch predictor, copied at distillation start and frozen
        # (excitation.inherit_predictor); absent by default
        self.excitation = excitation
        if excitation is not None:
            excitation.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: Config) -> IAFStudent:
        s = cfg.student
        assert s.upsample_factors is not None  # Config fills it in from the hop
        return cls(
            cfg.audio.n_mels,
            s.flow_layers,
            s.channels,
            s.kernel_size,
            s.dilation_cycle,
            s.noise,
            s.upsample_factors,
            s.conditioning_context,
            s.num_speakers,
            s.speaker_dim,
            s.log_scale_min,
            s.synthesis_tile,
            s.initial_scale,
            build_source(cfg, s.source),
        )

    @property
    def hop(self) -> int:
        hop = self.conditioner.hop
        assert hop is not None  # a student is always mel-conditioned
        return hop

    @property
    def receptive_field(self) -> int:
        """Noise samples one output sample depends on: ``x_t`` sees ``z_{t - rf + 1} ... z_t``
        with ``rf = 1 + sum_k rf_k`` (each flow adds its own window before ``t``)."""
        return 1 + sum(f.receptive_field for f in self.flows)

    @property
    def num_parameters(self) -> int:
        """Number of scalars in the model, frozen ones included (``count_parameters``)."""
        return count_parameters(self)

    # -- conditioning ------------------------------------------------------------------------

    def conditioning(self, mel: Tensor, speaker: Tensor | None = None) -> Conditioning:
        """Frame-rate conditioning of every layer of every flow, checked against the model;
        with the excitation of the clip whose whole mel ``mel`` is, when the student has one."""
        cond = self._frame_conditioning(mel, speaker)
        if self.excitation is not None:
            cond.source = self.excitation(mel)
        return cond

    def _frame_conditioning(self, mel: Tensor, speaker: Tensor | None) -> Conditioning:
        """:meth:`conditioning` without the excitation."""
        if mel is None or mel.dim() != 3 or mel.shape[1] != self.n_mels:
            shape = None if mel is None else tuple(mel.shape)
            raise UserError(
                f"mel must be (batch, {self.n_mels}, frames) to match audio.n_mels, got {shape}"
            )
        if self.num_speakers > 0:
            if speaker is None:
                raise UserError(
                    f"this student has student.num_speakers={self.num_speakers}; "
                    "no speaker id was given"
                )
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
            raise UserError(
                f"noise/audio has {samples} samples but {mel.shape[-1]} mel frames "
                f"of hop {self.hop} need {mel.shape[-1] * self.hop}"
            )

    # -- the IAF direction: noise -> audio in one pass -------------------------------------

    def forward(
        self, z: Tensor, mel: Tensor, speaker: Tensor | None = None
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

    def sample_noise(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Unit noise of the student's kind (``student.noise``), float32."""
        if device is None:
            device = next(self.parameters()).device
        return sample_noise(shape, self.noise, generator, device)

    def noise_log_density(self, z: Tensor) -> Tensor:
        """Log-density of the student's unit noise, elementwise."""
        return noise_log_density(z, self.noise)

    @torch.inference_mode()
    def synthesize(
        self,
        mel: Tensor,
        speaker: Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Audio ``(B, F * hop)`` in [-1, 1] from mel ``(B, n_mels, F)`` in one pass.

        ``temperature`` scales the noise (:func:`check_temperature`): 1 samples the student's
        distribution, 0 is its deterministic path (every flow's ``z = 0``: each step takes the
        mean of its logistic or Gaussian given the earlier steps)."""
        check_temperature(temperature)
        z = self.sample_noise((mel.shape[0], mel.shape[-1] * self.hop), generator, mel.device)
        return self.synthesize_from_noise(z * temperature, mel, speaker)

    @torch.inference_mode()
    def synthesize_from_noise(
        self, z: Tensor, mel: Tensor, speaker: Tensor | None = None
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

    @property
    def context_frames(self) -> int:
        """Frames of past noise and mel that samples of a frame depend on (receptive field)."""
        return math.ceil((self.receptive_field - 1) / self.hop)

    @torch.inference_mode()
    def synthesize_span(
        self,
        z: Tensor,
        mel: Tensor,
        f0: int,
        f1: int,
        speaker: Tensor | None = None,
        source: Tensor | None = None,
    ) -> Tensor:
        """The audio of frames ``[f0, f1)``, ``(B, (f1 - f0) * hop)`` clamped to [-1, 1],
        equal to those samples of the whole clip's synthesis from the same noise ``z (B, T)``
        and mel ``(B, n_mels, F)`` (``T = F * hop``), where ``mel`` ends at the clip's end or
        holds at least ``conditioning_context`` frames past ``f1``. Computed from
        :attr:`context_frames` frames of left context only.

        With an excitation, ``source (B, C_e, T)`` is the whole clip's (its phase depends on
        every earlier sample); None computes it from ``mel``, which must then start at the
        clip's start and end at its end."""
        hop = self.hop
        start = max(0, f0 - self.context_frames)
        cond = self._chunk_conditioning(mel, speaker, start, f1)
        if self.excitation is not None:
            if source is None:
                source = self.excitation(mel)
            cond.source = source[..., start * hop : f1 * hop]
        x = self._fused_run(z[:, start * hop : f1 * hop], cond)
        return x[:, (f0 - start) * hop :].clamp_(-1.0, 1.0)

    def _chunk_conditioning(
        self, mel: Tensor, speaker: Tensor | None, start: int, stop: int
    ) -> Conditioning:
        """Conditioning of frames ``[start, stop)`` exactly as the whole clip's: the mel is
        read with ``conditioning_context`` extra frames on each side, then cropped."""
        c = self.conditioning_context
        lo, hi = max(0, start - c), min(mel.shape[-1], stop + c)
        cond = self._frame_conditioning(mel[..., lo:hi], speaker)
        assert cond.frames is not None  # a student is always mel-conditioned
        frames = cond.frames[..., start - lo : stop - lo]
        return Conditioning(frames, cond.filter, cond.bias)

    # -- the other direction: audio -> noise, sequential ------------------------------------

    @torch.no_grad()
    def inverse(
        self, x: Tensor, mel: Tensor, speaker: Tensor | None = None
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


def check_temperature(temperature: float) -> None:
    """A sampling temperature (the scale of the student's unit noise) must be finite and
    non-negative; a :class:`UserError` naming the value otherwise."""
    if not 0.0 <= temperature < float("inf"):  # also refuses NaN
        raise UserError(f"--temperature must be a finite number >= 0, got {temperature:g}")
