"""Frame-level F0 and voicing predicted from the normalised log-mel, and its training loss.

:class:`PitchPredictor` is a few 1-D convolutions over frames (``+-(k // 2) * layers`` frames of
context, zero padding at the edges like the conditioner's): ``(B, n_mels, F)`` ->
``f0_hz (B, F)``, ``voiced_prob (B, F)``. The F0 is regressed in octaves above the range's
floor, ``log2(f0 / fmin)``, squashed by a sigmoid into ``[0, log2(fmax / fmin)]``: every
prediction is a pitch of the range (also in unvoiced frames, where it is meaningless but
finite), and one octave means the same error at any pitch. The range is stored with the
weights (buffers), so a copy carries it whatever config it is later built from.

It lives inside the teacher (``teacher.excitation.predictor``), is trained jointly with it by
:func:`pitch_loss` (weighted by ``teacher.pitch_weight`` beside the NLL) on the batch's F0
labels (:mod:`wavedistill.data.pitch`), and the student receives a frozen copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PitchPredictor(nn.Module):
    """Normalised log-mel ``(B, n_mels, F)`` -> F0 in Hz and voicing probability, ``(B, F)``
    each (module docstring). ``layers`` convolutions of ``kernel_size`` frames and
    ``channels`` channels with leaky ReLUs, then a 1x1 to (octave logit, voicing logit)."""

    def __init__(
        self,
        n_mels: int,
        channels: int = 64,
        layers: int = 3,
        kernel_size: int = 5,
        fmin: float = 50.0,
        fmax: float = 500.0,
    ):
        super().__init__()
        convs, width = [], n_mels
        for _ in range(layers):
            convs += [
                nn.Conv1d(width, channels, kernel_size, padding=kernel_size // 2),
                nn.LeakyReLU(0.2),
            ]
            width = channels
        self.body = nn.Sequential(*convs)
        self.out = nn.Conv1d(width, 2, 1)
        self.f0_range: Tensor  # (2,): the predictor's floor and ceiling in Hz
        self.register_buffer("f0_range", torch.tensor([float(fmin), float(fmax)]))

    @property
    def octaves(self) -> Tensor:
        """Width of the range in octaves, ``log2(fmax / fmin)`` (0-dim)."""
        return torch.log2(self.f0_range[1] / self.f0_range[0])

    def logits(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """``(octaves above fmin (B, F), voicing logit (B, F))``, differentiable."""
        x = self.out(self.body(mel))  # (B, 2, F)
        return torch.sigmoid(x[:, 0]) * self.octaves, x[:, 1]

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """``mel (B, n_mels, F)`` -> ``(f0_hz (B, F), voiced_prob (B, F))``."""
        octave, logit = self.logits(mel)
        return self.f0_range[0] * torch.exp2(octave), torch.sigmoid(logit)


def label_octaves(f0: Tensor, predictor: PitchPredictor) -> Tensor:
    """Voiced labels ``f0 (B, F)`` in Hz as octaves above the predictor's floor, clamped to
    its range (unvoiced frames give 0; they are masked out wherever this is used)."""
    lo, _ = predictor.f0_range
    return torch.log2(f0.clamp_min(lo) / lo).clamp(max=float(predictor.octaves))


def pitch_loss(
    predictor: PitchPredictor, mel: Tensor, f0: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked L1 on log-F0 (octaves) over labelled voiced frames + BCE on voicing.

    ``mel (B, n_mels, F)`` normalised, ``f0 (B, F)`` labels in Hz (0 = unvoiced). Returns
    ``(loss (scalar), {"pitch_l1_octaves", "voicing_bce"} detached)``.
    """
    octave, logit = predictor.logits(mel)
    voiced = f0 > 0
    target = label_octaves(f0, predictor)
    l1 = ((octave - target).abs() * voiced).sum() / voiced.sum().clamp_min(1)
    bce = F.binary_cross_entropy_with_logits(logit.float(), voiced.float())
    return l1 + bce, {"pitch_l1_octaves": l1.detach(), "voicing_bce": bce.detach()}


@torch.no_grad()
def pitch_metrics(predictor: PitchPredictor, mel: Tensor, f0: Tensor) -> dict[str, float]:
    """``{"pitch_cents": mean |error| in cents on frames voiced in both label and prediction,
    "voicing_accuracy": share of frames whose voicing is right}``. With no frame voiced in
    both, the cents error is the width of the range (the worst possible): validation averages
    batches, and a NaN would poison the average."""
    octave, logit = predictor.logits(mel)
    label_voiced, predicted_voiced = f0 > 0, logit > 0
    both = label_voiced & predicted_voiced
    error = (octave - label_octaves(f0, predictor)).abs()[both] * 1200.0
    cents = float(error.mean()) if error.numel() else 1200.0 * float(predictor.octaves)
    accuracy = float((label_voiced == predicted_voiced).float().mean())
    return {"pitch_cents": cents, "voicing_accuracy": accuracy}
