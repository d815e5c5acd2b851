"""What an evaluation measures: held-out clips, their scores per clip and on average, and the
results in the shape of ``metrics.json``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wavedistill.config import Config
from wavedistill.evaluation import metrics

log = logging.getLogger(__name__)

FAILED = "failed (the synthesis is not finite)"  # every metric of a clip that failed


@dataclass
class Clip:
    """A held-out utterance: ``audio (T,)`` in [-1, 1] and normalised ``mel (n_mels, T / hop)``."""

    id: str
    audio: torch.Tensor
    mel: torch.Tensor
    speaker: int


@dataclass
class Results:
    """Everything measured, in the shape of ``metrics.json``."""

    header: dict[str, Any]
    nll: dict[str, Any] | None = None
    kl: dict[str, Any] | None = None
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # "student"/"teacher"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.header)
        if self.nll is not None:
            out["nll"] = self.nll
        if self.kl is not None:
            out["kl"] = self.kl
        out["copy_synthesis"] = self.samples
        return out


def score(clips: list[Clip], synthesis: dict[str, np.ndarray], cfg: Config) -> dict[str, Any]:
    """Metrics of each synthesis against its original (cut to the synthesis's length), per clip
    and averaged over the clips where the metric has a value. A synthesis that is not finite
    (a diverged model) has the reason in place of every metric; the other clips are scored."""
    per_clip: dict[str, dict[str, float | str]] = {}
    for clip in clips:
        est = synthesis[clip.id]
        if not np.isfinite(est).all():
            log.warning("clip %s: the synthesis is not finite; not scored", clip.id)
            per_clip[clip.id] = {m.name: FAILED for m in metrics.METRICS}
            continue
        ref = clip.audio.numpy()[: len(est)]
        per_clip[clip.id] = metrics.compare(ref, est[: len(ref)], cfg)
    return {"mean": average(per_clip), "clips": per_clip}


def average(per_clip: dict[str, dict[str, float | str]]) -> dict[str, float | str]:
    """Mean of each metric over the clips that have a number; the first reason otherwise."""
    out: dict[str, float | str] = {}
    for metric in metrics.METRICS:
        values = [c[metric.name] for c in per_clip.values()]
        numbers = [v for v in values if isinstance(v, float)]
        out[metric.name] = float(np.mean(numbers)) if numbers else str(values[0])
    return out
