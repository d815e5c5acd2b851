"""Maximum likelihood: the teacher's training objective (MAF direction, one parallel pass).

A teacher with an excitation (``teacher.source = harmonic``) also trains its pitch predictor
here: ``loss = NLL + teacher.pitch_weight * pitch loss`` on the batch's F0 labels
(:func:`wavedistill.models.pitch.pitch_loss`), and validation reports the predictor's
``pitch_cents`` and ``voicing_accuracy``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wavedistill.errors import UserError
from wavedistill.models.networks import unwrap
from wavedistill.models.pitch import PitchPredictor, pitch_loss, pitch_metrics
from wavedistill.models.sampling import generate
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.base import bare_model


def _predictor(model: nn.Module, batch: dict[str, Tensor]) -> PitchPredictor | None:
    """The teacher's pitch predictor when it has an excitation (then the batch must hold F0
    labels), else None."""
    excitation = getattr(unwrap(model), "excitation", None)
    if excitation is None:
        return None
    if "f0" not in batch:
        raise UserError(
            "teacher.source=harmonic trains a pitch predictor on F0 labels; this "
            "batch has none (run preprocess with data.pitch=true)"
        )
    return excitation.predictor


class MaximumLikelihood:
    """Teacher training objective: mean negative log-likelihood per sample (nats).

    The forward pass goes through ``model(...)`` so that a DDP wrapper synchronises gradients.
    ``media_samples``: length of the samples :meth:`log_media` draws; ``pitch_weight``: weight
    of the pitch predictor's loss (teachers with an excitation only); ``locked_phase``: the
    excitation's phase follows each clip's fundamental (``teacher.source_phase = locked``).
    """

    valid_metric = "nll_bits"

    def __init__(
        self, media_samples: int = 8000, pitch_weight: float = 0.0, locked_phase: bool = False
    ):
        self.media_samples = media_samples
        self.pitch_weight = pitch_weight
        self.locked_phase = locked_phase

    def _nll_nats(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        audio, mel = batch["audio"], batch.get("mel")
        excitation = bare_model(model, WaveNetTeacher).excitation
        source = None  # None: the teacher computes the free-running excitation from the mel
        if self.locked_phase and excitation is not None and mel is not None:
            source = excitation(mel, audio)
        params = model(audio, mel, batch.get("speaker"), source)
        return -bare_model(model, WaveNetTeacher).distribution.log_prob(params, audio).mean()

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(mean NLL in nats per sample (scalar, differentiable), {"nll_bits": 0-dim tensor})``;
        the log stays on the device, detached: the trainer reads it when it writes a log line,
        so the step does not wait for the device."""
        nll = self._nll_nats(model, batch)
        logs = {"nll_bits": nll.detach() / math.log(2.0)}
        predictor = _predictor(model, batch)
        if predictor is None:
            return nll, logs
        aux, pitch_logs = pitch_loss(predictor, batch["mel"], batch["f0"])
        return nll + self.pitch_weight * aux, {**logs, **pitch_logs}

    @torch.no_grad()
    def validate(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        """``{"nll_bits": mean NLL in bits per sample}`` of one held-out batch, and with an
        excitation the predictor's ``pitch_cents`` and ``voicing_accuracy``."""
        out = {"nll_bits": self._nll_nats(model, batch).item() / math.log(2.0)}
        predictor = _predictor(model, batch)
        if predictor is not None:
            out.update(pitch_metrics(predictor, batch["mel"], batch["f0"]))
        return out

    def log_media(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"teacher": (T,)}``: a sample of the first ``media_samples`` of the batch's first
        clip, drawn step by step from its mel (cached sampler)."""
        teacher = bare_model(model, WaveNetTeacher)
        mel, speaker = batch.get("mel"), batch.get("speaker")
        speaker = speaker[:1] if speaker is not None and teacher.num_speakers else None
        length = min(self.media_samples, batch["audio"].shape[-1])
        if teacher.n_mels:
            hop = teacher.conditioner.hop
            assert mel is not None and hop is not None  # a mel-conditioned teacher's batch
            mel = mel[:1, :, : math.ceil(length / hop)]
        else:
            mel = None
        return {"teacher": generate(teacher, mel, speaker, num_samples=length, batch=1)[0]}
