"""Signal levels: RMS level in dB re full scale, batched, and the loudness gap between clips
(the whisper detector that the power loss logs and evaluation reports)."""

from __future__ import annotations

import torch

# Level given to digital silence: far below any 16-bit signal (one LSB is about -96 dBFS),
# so a silent clip has a finite loudness and identical silent clips differ by 0 dB.
SILENCE_DB = -120.0


def levels_db(x: torch.Tensor) -> torch.Tensor:
    """RMS level of each clip in dB re full scale, floored at ``SILENCE_DB``:
    ``(B, T) -> (B,)`` float32, without gradient. The mean square is taken in float64, so a
    long clip's sum of squares keeps its precision."""
    power = x.detach().double().square().mean(-1)
    return (10.0 * torch.log10(power.clamp_min(10.0 ** (SILENCE_DB / 10.0)))).float()


def loudness_gap_db(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The whisper detector: RMS level of ``x`` minus that of ``reference`` per clip, in dB
    (negative: ``x`` is too quiet). ``(B, T), (B, T) -> (B,)``."""
    return levels_db(x) - levels_db(reference)
