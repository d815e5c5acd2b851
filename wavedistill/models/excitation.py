"""A source-filter excitation derived from the log-mel alone (``teacher.source = harmonic``).

The teacher's pitch predictor (:mod:`wavedistill.models.pitch`) gives F0 and voicing per frame;
:func:`harmonic_excitation` turns them into a sample-rate signal of ``C_e = 2`` channels, which
the teacher and every student flow take beside the audio (or noise) channel in their first
1x1 convolution, as the source that the network then filters (NSF, Wang et al., 2019).

Channels, for ``T = F * hop`` samples:

0. harmonics: ``sum_k g_k sin(k phase)`` over the harmonics ``k f0`` below Nyquist, gated by
   voicing and scaled to an RMS of :data:`AMPLITUDE` (NSF's 0.1; a pulse-like sum of many
   harmonics peaks near 1 then, like audio);
1. voicing: the gate itself, in [0, 1].

Frequency. The instantaneous F0 is interpolated linearly between frame centres (the centres of
the mel's frames, :func:`wavedistill.data.pitch.frame_centres`) and held beyond the first and
last. A per-sample constant within each frame would also keep the phase continuous, but its
frequency would step at every frame boundary, a kink in the phase that smears the harmonics
over neighbouring bins; interpolated F0 glides. The phase is ``2 pi`` times the running sum of
``f0 / sample_rate``, in float64 and wrapped to one cycle before ``sin``: it starts at 0 at the
clip's first sample and never jumps, whatever F0 does between frames.

Band limit. Harmonic ``k`` has gain ``g_k = clamp((nyquist - k f0) / fade, 0, 1)`` with
``fade`` = 5% of Nyquist: nothing at or above Nyquist (no aliasing), and a harmonic that
crosses the band edge as F0 glides fades instead of switching.

Voicing. The predictor's voicing probability is thresholded at 0.5 per frame and the 0/1
decisions are interpolated between frame centres like F0: a voiced-unvoiced change ramps over
one hop instead of jumping, and a stretch of unvoiced frames is exactly zero.

Phase while the teacher learns (``teacher.source_phase = locked``). A phase that runs freely
from the clip's start is not aligned with the waveform of a training clip, so under teacher
forcing a next-sample predictor can take only the frequency from the excitation, which the past
samples already carry. With ``locked``, maximum-likelihood training measures, per frame, the
phase of the clip's fundamental against the free-running phase (:func:`lock_phase`) and shifts
the excitation onto it: the teacher learns to follow the excitation's phase. Everywhere else
(sampling, the held-out NLL of ``evaluate``, distillation, the student) the phase runs freely
from the mel alone, and the teacher's samples then follow that. The locked excitation reads
the clip itself, a little of it ahead of each sample (one phase per frame), so the NLL it
gives is a training quantity, not a density of the clip given the mel.

Deterministic, on purpose. NSF adds Gaussian noise to its source. Here the only noise is the
flow's own ``z``: the student maps ``x = z * s_tot(z_<t, c) + mu_tot(z_<t, c)``, and its
log-determinant is exactly ``sum_t log s_tot,t`` only if everything besides ``z`` that enters
the flows is a fixed function of the conditioning ``c``. Random noise inside the excitation
would be a second, unobserved noise source: ``x`` would no longer be an invertible function of
``z`` given ``c``, its density would be an intractable integral over that noise, and
KL(student || teacher) would no longer have the exact entropy term. The excitation is
therefore a deterministic function of the mel (same mel, same excitation, in every code path),
and it is computed without gradient: the predictor learns from its own loss only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavedistill.data.pitch import frame_offset
from wavedistill.errors import UserError
from wavedistill.models.pitch import PitchPredictor

if TYPE_CHECKING:
    from wavedistill.config import Config
    from wavedistill.models.networks import Conditioning

SOURCES = ("none", "harmonic")
PHASES = ("free", "locked")  # teacher.source_phase: the excitation's phase in MLE training
CHANNELS = 2  # harmonics, voicing
AMPLITUDE = 0.1  # RMS of the voiced harmonic channel
FADE = 0.05  # share of Nyquist over which a harmonic fades out below it
VOICED = 0.5  # voicing probability above which a frame is voiced


def interpolate_frames(values: Tensor, hop: int, offset: float) -> Tensor:
    """Per-frame ``values (B, F)`` at every sample, ``(B, F * hop)`` float64: linear between
    frame centres ``f * hop + offset``, held before the first and after the last."""
    B, F_ = values.shape
    t = torch.arange(F_ * hop, dtype=torch.float64, device=values.device)
    pos = ((t - offset) / hop).clamp(0, F_ - 1)
    lo = pos.floor().long().clamp(max=max(F_ - 2, 0))
    hi = (lo + 1).clamp(max=F_ - 1)
    w = pos - lo
    v = values.to(torch.float64)
    return v[:, lo] * (1 - w) + v[:, hi] * w


def phase_cycles(f0: Tensor, sample_rate: int) -> Tensor:
    """Phase in cycles, wrapped to [0, 1), of a per-sample frequency ``f0 (B, T)`` in Hz:
    ``sum_{s < t} f0_s / sample_rate`` (0 at the first sample), float64."""
    cycles = torch.cumsum(f0.to(torch.float64) / sample_rate, dim=-1)
    cycles = F.pad(cycles[..., :-1], (1, 0))
    return cycles - torch.floor(cycles)


def lock_phase(cycles: Tensor, audio: Tensor, hop: int, offset: float) -> Tensor:
    """The free-running phase ``cycles (B, T)`` (cycles, float64) shifted onto the phase of the
    fundamental of ``audio (B, T)``: per frame, ``theta_f = arg sum_n w_n x_n e^{-2 pi i
    cycles_n}`` over a Hann window of two hops centred on the frame's centre (the complex
    amplitude of ``x`` at the instantaneous F0), unwrapped across frames and interpolated
    between frame centres like F0. Returns ``cycles + theta / (2 pi)``, wrapped to [0, 1), so
    that ``cos(2 pi result)`` follows the clip's fundamental."""
    B, T = cycles.shape
    frames = T // hop
    baseband = audio.to(torch.float64) * torch.exp(-2j * math.pi * cycles)  # (B, T) complex
    window = torch.hann_window(2 * hop, periodic=False, dtype=torch.float64, device=audio.device)
    padded = F.pad(torch.view_as_real(baseband).permute(0, 2, 1), (hop, hop))  # (B, 2, T + 2 hop)
    starts = (torch.arange(frames, device=audio.device) * hop + round(offset)).clamp(max=T)
    idx = starts[:, None] + torch.arange(2 * hop, device=audio.device)  # (F, 2 hop)
    pieces = padded[:, :, idx]  # (B, 2, F, 2 hop): each frame's window, centred on its centre
    amplitude = (pieces * window).sum(-1)  # (B, 2, F)
    theta = torch.atan2(amplitude[:, 1], amplitude[:, 0])  # (B, F)
    step = torch.remainder(torch.diff(theta, dim=-1) + math.pi, 2 * math.pi) - math.pi
    unwrapped = torch.cat([theta[:, :1], theta[:, :1] + torch.cumsum(step, dim=-1)], dim=-1)
    locked = cycles + interpolate_frames(unwrapped, hop, offset) / (2 * math.pi)
    return locked - torch.floor(locked)


def harmonic_sum(f0: Tensor, cycles: Tensor, sample_rate: int, max_harmonics: int = 0) -> Tensor:
    """``sum_k g_k sin(2 pi k cycles) / sqrt(sum_k g_k^2 / 2)``: band-limited harmonics of the
    per-sample ``f0 (B, T)`` (Hz, > 0) at phase ``cycles (B, T)``, float64, unit RMS.

    ``sin(k theta)`` by the recurrence ``s_{k+1} = 2 cos(theta) s_k - s_{k-1}`` (one ``sin``
    and one ``cos`` per sample, not per harmonic), in float64."""
    nyquist = sample_rate / 2
    fade = FADE * nyquist
    top = math.floor(nyquist / float(f0.min()))
    if max_harmonics > 0:
        top = min(top, max_harmonics)
    theta = 2 * math.pi * cycles
    two_cos = 2 * torch.cos(theta)
    prev, cur = torch.zeros_like(theta), torch.sin(theta)
    total, power = torch.zeros_like(theta), torch.zeros_like(theta)
    for k in range(1, top + 1):
        gain = ((nyquist - k * f0) / fade).clamp(0.0, 1.0)
        total += gain * cur
        power += gain * gain
        prev, cur = cur, two_cos * cur - prev
    return total * torch.rsqrt(power.clamp_min(1.0) / 2)


def harmonic_excitation(
    f0: Tensor,
    voiced: Tensor,
    sample_rate: int,
    hop: int,
    offset: float = 0.0,
    max_harmonics: int = 0,
    audio: Tensor | None = None,
) -> Tensor:
    """The excitation of a clip (module docstring): per-frame ``f0 (B, F)`` in Hz and
    ``voiced (B, F)`` in [0, 1] (decisions: 0 or 1) -> ``(B, 2, F * hop)`` float32, with
    frame centres at ``f * hop + offset`` and at most ``max_harmonics`` harmonics (0: all
    below Nyquist). With ``audio (B, F * hop)`` the phase is locked to its fundamental
    (:func:`lock_phase`); without, it runs freely from the first sample."""
    gate = interpolate_frames(voiced, hop, offset)  # (B, T)
    out = torch.zeros(f0.shape[0], CHANNELS, f0.shape[1] * hop, device=f0.device)
    on = gate > 0
    if bool(on.any()):
        freq = interpolate_frames(f0, hop, offset)
        # harmonics are needed where the gate is open; elsewhere any positive F0 will do
        freq = torch.where(on, freq, freq[on].max())
        cycles = phase_cycles(freq, sample_rate)
        if audio is not None:
            cycles = lock_phase(cycles, audio, hop, offset)
        harmonics = harmonic_sum(freq, cycles, sample_rate, max_harmonics)
        out[:, 0] = (AMPLITUDE * gate * harmonics).float()
    out[:, 1] = gate.float()
    return out


class HarmonicSource(nn.Module):
    """Normalised mel ``(B, n_mels, F)`` -> excitation ``(B, 2, F * hop)``: the pitch
    predictor (``predictor``, a submodule: its weights are the model's) and
    :func:`harmonic_excitation`. ``offset``: frame centres' offset from ``f * hop``."""

    channels = CHANNELS

    def __init__(
        self,
        n_mels: int,
        sample_rate: int,
        hop: int,
        offset: float = 0.0,
        max_harmonics: int = 0,
        pitch_channels: int = 64,
        fmin: float = 50.0,
        fmax: float = 500.0,
    ):
        super().__init__()
        self.sample_rate, self.hop, self.offset = sample_rate, hop, offset
        self.max_harmonics = max_harmonics
        self.predictor = PitchPredictor(n_mels, pitch_channels, fmin=fmin, fmax=fmax)

    @torch.no_grad()
    def forward(self, mel: Tensor, audio: Tensor | None = None) -> Tensor:
        """``mel (B, n_mels, F)`` -> ``(B, 2, F * hop)`` in ``mel``'s dtype (no gradient);
        ``audio (B, F * hop)``, for teacher training only, locks the phase to it.

        The predictor runs in float32 outside autocast: the excitation is the same function
        of the mel in training (bf16 autocast) and in every inference path."""
        with torch.autocast(mel.device.type, enabled=False):
            weight = self.predictor.out.weight
            f0, prob = self.predictor(mel.to(weight.dtype))
            voiced = (prob > VOICED).to(f0.dtype)
            src = harmonic_excitation(
                f0.float(),
                voiced.float(),
                self.sample_rate,
                self.hop,
                self.offset,
                self.max_harmonics,
                audio,
            )
        return src.to(mel.dtype)


def build_source(cfg: Config, name: str) -> HarmonicSource | None:
    """The excitation module that ``name`` (``teacher.source`` / ``student.source``) asks for,
    built from the teacher's settings (a student's config carries its teacher's), or None."""
    if name == "none":
        return None
    if name not in SOURCES:
        raise UserError(f"source {name!r}: expected one of {', '.join(SOURCES)}")

    a, t = cfg.audio, cfg.teacher
    return HarmonicSource(
        a.n_mels,
        a.sample_rate,
        a.hop_length,
        frame_offset(a),
        t.source_harmonics,
        t.pitch_channels,
        cfg.data.pitch_fmin,
        cfg.data.pitch_fmax,
    )


def with_source(x: Tensor, cond: Conditioning | None) -> Tensor:
    """The first layer's input: ``x (B, 1, T)`` and, when the conditioning carries one, the
    excitation ``(B, C_e, T)`` beside it -> ``(B, 1 + C_e, T)`` in ``x``'s dtype."""
    source = cond.source if cond is not None else None
    if source is None:
        return x
    if source.shape[-1] != x.shape[-1]:
        raise ValueError(f"excitation of {source.shape[-1]} samples for {x.shape[-1]} samples")
    return torch.cat([x, source.to(x.dtype)], dim=1)


def inherit_predictor(student: nn.Module, teacher: nn.Module) -> None:
    """Give ``student`` a frozen copy of the teacher's pitch predictor (distillation start),
    so both compute the same excitation from the same mel. Refuses a mismatch in one line."""
    s, t = getattr(student, "excitation", None), getattr(teacher, "excitation", None)
    if (s is None) != (t is None):
        raise UserError(
            f"student.source and teacher.source differ (student "
            f"{'harmonic' if s is not None else 'none'}, teacher "
            f"{'harmonic' if t is not None else 'none'})"
        )
    if s is None or t is None:
        return
    s.predictor.load_state_dict(t.predictor.state_dict())
    s.predictor.requires_grad_(False)
