"""The WaveNet teacher: p(x) = prod_t p(x_t | x_<t, c), scored in one parallel pass (MAF
direction), and its maximum-likelihood objective.

The network sees the clip shifted right by one sample (``x_{t-1}`` at position ``t``, zero at
``t = 0``), so output ``t`` parameterises ``p(x_t | x_<t, c)`` and one pass scores every step.

Input representation: one channel holding the float sample. For the mixture-of-logistics and
Gaussian heads it is the sample itself; for the categorical head it is the sample's mu-law class
``q`` mapped evenly onto [-1, 1] (``2 q / (levels - 1) - 1``, the quantised companded value), so
the network sees exactly the same values in training (16-bit audio) and in sampling (class
centres). A sampler feeds its draws through :meth:`encode_input` too.

Shapes: audio ``(B, T)``; mel ``(B, n_mels, T / hop)`` normalised; speaker ``(B,)`` int64;
parameters ``(B, P, T)`` with ``P = distribution.num_params``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavedistill.config import Config
from wavedistill.data.audio import mu_law_quantize
from wavedistill.errors import UserError
from wavedistill.models.distributions import build_distribution
from wavedistill.models.distributions.base import OutputDistribution
from wavedistill.models.excitation import HarmonicSource, build_source, with_source
from wavedistill.models.networks import (
    Conditioner,
    Conditioning,
    WaveNetStack,
    check_speaker_ids,
    count_parameters,
    dilation_cycle,
)


class WaveNetTeacher(nn.Module):
    """Autoregressive WaveNet: input 1x1 conv -> gated residual stack with skips -> ReLU, 1x1,
    ReLU, 1x1 -> per-step distribution parameters.

    Attributes: ``distribution`` (the output head), ``conditioner`` (frame-rate mel/speaker
    conditioning of every layer), ``stack`` (the residual blocks), ``receptive_field``
    (samples of the past one prediction sees), ``num_parameters``.
    """

    def __init__(
        self,
        distribution: OutputDistribution,
        *,
        layers: int,
        stacks: int,
        kernel_size: int,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        n_mels: int = 0,
        upsample_factors: Sequence[int] = (),
        conditioning_context: int = 1,
        num_speakers: int = 0,
        speaker_dim: int = 16,
        mu_law_levels: int | None = None,
        excitation: HarmonicSource | None = None,
    ):
        super().__init__()
        self.distribution = distribution
        self.mu_law_levels = mu_law_levels
        self.n_mels = n_mels
        self.num_speakers = num_speakers
        # the audio channel, then the excitation's channels when there is one
        source_channels = excitation.channels if excitation is not None else 0
        self.input_conv = nn.Conv1d(1 + source_channels, residual_channels, 1)
        self.stack = WaveNetStack(
            residual_channels,
            gate_channels,
            skip_channels,
            kernel_size,
            dilation_cycle(layers, layers // stacks),
        )
        self.conditioner = Conditioner(
            self.stack.conditioning_channels,
            n_mels,
            upsample_factors,
            conditioning_context,
            num_speakers,
            speaker_dim,
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(skip_channels, skip_channels, 1),
            nn.ReLU(),
            nn.Conv1d(skip_channels, distribution.num_params, 1),
        )
        # registered last (and absent by default): a model without it is the model of before
        self.excitation = excitation

    @classmethod
    def from_config(cls, cfg: Config) -> WaveNetTeacher:
        t = cfg.teacher
        assert t.upsample_factors is not None  # Config fills it in from the hop
        if t.skip_channels <= 0:
            raise UserError(f"teacher.skip_channels must be positive, got {t.skip_channels}")
        return cls(
            build_distribution(t),
            layers=t.layers,
            stacks=t.stacks,
            kernel_size=t.kernel_size,
            residual_channels=t.residual_channels,
            gate_channels=t.gate_channels,
            skip_channels=t.skip_channels,
            n_mels=cfg.audio.n_mels if t.use_mel else 0,
            upsample_factors=t.upsample_factors,
            conditioning_context=t.conditioning_context,
            num_speakers=t.num_speakers,
            speaker_dim=t.speaker_dim,
            mu_law_levels=t.mu_law_levels if t.output == "categorical" else None,
            excitation=build_source(cfg, t.source),
        )

    @property
    def receptive_field(self) -> int:
        """Samples of the past one prediction sees (the stack's; the input is shifted inside)."""
        return self.stack.receptive_field

    @property
    def num_parameters(self) -> int:
        """Number of scalars in the model, frozen ones included (``count_parameters``)."""
        return count_parameters(self)

    # -- pieces a sampler reuses -----------------------------------------------------------

    def encode_input(self, audio: Tensor) -> Tensor:
        """The network's input representation of samples: ``(B, T) -> (B, 1, T)``."""
        x = audio.unsqueeze(1)
        if self.mu_law_levels is not None:
            q = mu_law_quantize(x, self.mu_law_levels)
            x = q.to(audio.dtype) * (2.0 / (self.mu_law_levels - 1)) - 1.0
        return x

    def conditioning(
        self, mel: Tensor | None, speaker: Tensor | None = None, source: Tensor | None = None
    ) -> Conditioning | None:
        """Frame-rate conditioning of every layer (``L * G`` channels), checked against the
        model: mel ``(B, n_mels, F)``, speaker ``(B,)``. With an excitation, it carries the
        excitation ``(B, C_e, F * hop)``: ``source`` when given (a window of a longer clip's,
        whose phase the window's mel alone cannot give), else computed from ``mel``."""
        if self.n_mels > 0:
            if mel is None:
                raise UserError(
                    "this teacher is conditioned on mel (teacher.use_mel=true); no mel was given"
                )
            if mel.dim() != 3 or mel.shape[1] != self.n_mels:
                raise UserError(
                    f"mel must be (batch, {self.n_mels}, frames) to match "
                    f"audio.n_mels, got {tuple(mel.shape)}"
                )
        if self.num_speakers > 0:
            if speaker is None:
                raise UserError(
                    "this teacher has teacher.num_speakers="
                    f"{self.num_speakers}; no speaker id was given"
                )
            check_speaker_ids(speaker, self.num_speakers, "teacher.num_speakers")
        cond = self.conditioner(
            mel if self.n_mels > 0 else None, speaker if self.num_speakers > 0 else None
        )
        if self.excitation is not None:
            cond.source = self.excitation(mel) if source is None else source
        return cond

    def output(self, skips: Tensor) -> Tensor:
        """Head: sum of skips ``(B, S, T)`` -> distribution parameters ``(B, P, T)`` in the
        weights' dtype.

        Runs in float32 even under bf16 autocast: a mean is needed to ~1e-5 to place it on the
        16-bit grid, and bfloat16 resolves only ~4e-3 near 1.
        """
        with torch.autocast(skips.device.type, enabled=False):
            last = self.head[-1]
            assert isinstance(last, nn.Conv1d)
            return self.head(skips.to(last.weight.dtype))

    # -- density ---------------------------------------------------------------------------

    def forward(
        self,
        audio: Tensor,
        mel: Tensor | None = None,
        speaker: Tensor | None = None,
        source: Tensor | None = None,
    ) -> Tensor:
        """Parameters of ``p(x_t | x_<t, c)`` for every t: audio ``(B, T)`` -> ``(B, P, T)``.
        ``source``: see :meth:`conditioning` (None: from the mel)."""
        cond = self.conditioning(mel, speaker, source)
        if cond is not None and cond.frames is not None:
            hop = self.conditioner.hop
            assert mel is not None and hop is not None  # there are frames, hence a mel
            if audio.shape[-1] != mel.shape[-1] * hop:
                raise UserError(
                    f"audio has {audio.shape[-1]} samples but {mel.shape[-1]} mel "
                    f"frames of hop {hop} need {mel.shape[-1] * hop}"
                )
        x = F.pad(self.encode_input(audio)[..., :-1], (1, 0))  # x_{t-1} at t: (B, 1, T)
        # the excitation at t is conditioning, known for every t: only the audio is shifted
        x = with_source(x, cond)
        with torch.autocast(x.device.type, enabled=False):
            # float32 residual stream from the start: under autocast only the convolutions'
            # inputs are rounded to bfloat16, the sums between layers stay float32
            h = self.input_conv(x.to(self.input_conv.weight.dtype))  # (B, R, T)
        _, skips = self.stack(h, cond)
        return self.output(skips)

    def log_prob(
        self, audio: Tensor, mel: Tensor | None = None, speaker: Tensor | None = None
    ) -> Tensor:
        """``log p(x_t | x_<t, c)`` in nats for every step: ``(B, T)`` (discrete: 16-bit levels,
        or 256 mu-law levels for the categorical head)."""
        return self.distribution.log_prob(self(audio, mel, speaker), audio)

    def nll_bits(
        self, audio: Tensor, mel: Tensor | None = None, speaker: Tensor | None = None
    ) -> Tensor:
        """Mean negative log-likelihood in bits per sample (a scalar)."""
        return -self.log_prob(audio, mel, speaker).mean() / math.log(2.0)
