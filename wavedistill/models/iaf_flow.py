"""One inverse autoregressive flow of the student and its unit noise.

A flow maps ``x^(k-1) (B, T)`` to ``(mu^k, log s^k)``, where step ``t`` depends on
``x^(k-1)_<t`` only (a WaveNet stack on the input shifted one step); the student
(:mod:`wavedistill.models.student`) stacks them as ``x^k = x^(k-1) * s^k + mu^k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavedistill.models.excitation import with_source
from wavedistill.models.networks import Conditioning, WaveNetStack, dilation_cycle, shift_right

# Entropy of the unit noise distribution in nats: a logistic with scale s has entropy
# log s + 2, a Gaussian with standard deviation s has log s + log(2 pi e) / 2.
NOISE_ENTROPY = {"logistic": 2.0, "gaussian": 0.5 * math.log(2.0 * math.pi * math.e)}
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# std of the flows' last layer at initialisation (module docstring: near identity, not zero)
_OUTPUT_INIT_STD = 0.01


def sample_noise(
    shape: Sequence[int],
    noise: str,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
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


class IAFFlow(nn.Module):
    """One flow: ``x^(k-1) (B, T)`` -> ``(mu^k, log s^k)``, each ``(B, T)``, where step ``t``
    depends on ``x^(k-1)_<t`` only. Log-scales are floored at ``log_scale_min``."""

    def __init__(
        self,
        layers: int,
        channels: int,
        kernel_size: int,
        cycle: int,
        log_scale_min: float,
        initial_log_scale: float = 0.0,
        source_channels: int = 0,
    ):
        super().__init__()
        self.log_scale_min = log_scale_min
        # the shifted input, then ``source_channels`` of excitation (conditioning, unshifted)
        self.input_conv = nn.Conv1d(1 + source_channels, channels, 1)
        self.stack = WaveNetStack(
            channels, 2 * channels, 0, kernel_size, dilation_cycle(layers, cycle)
        )
        self.output = nn.Conv1d(channels, 2, 1)
        nn.init.normal_(self.output.weight, std=_OUTPUT_INIT_STD)
        assert self.output.bias is not None  # a Conv1d has a bias by default
        with torch.no_grad():
            self.output.bias.copy_(torch.tensor([0.0, initial_log_scale]))

    @property
    def receptive_field(self) -> int:
        """Past input samples one step's parameters depend on (``t - rf ... t - 1``)."""
        return self.stack.receptive_field

    def forward(self, x: Tensor, cond: Conditioning | None) -> tuple[Tensor, Tensor]:
        h = self.input_conv(with_source(shift_right(x).unsqueeze(1), cond))  # (B, C, T)
        h, _ = self.stack(h, cond)
        mu, log_s = self.output(F.relu(h)).unbind(1)
        return mu, log_s.clamp_min(self.log_scale_min)
