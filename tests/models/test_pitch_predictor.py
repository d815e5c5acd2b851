"""The pitch predictor: shapes and range, it learns a tiny labelled set, and the teacher's
objective trains and reports it."""

from __future__ import annotations

import math

import pytest
import torch

from wavedistill.config import config_from_dict
from wavedistill.errors import UserError
from wavedistill.models.pitch import PitchPredictor, pitch_loss, pitch_metrics

N_MELS = 8


def test_shapes_and_range():
    torch.manual_seed(0)
    predictor = PitchPredictor(N_MELS, channels=16, fmin=60.0, fmax=400.0)
    with torch.no_grad():
        f0, prob = predictor(torch.randn(3, N_MELS, 13))
    assert f0.shape == prob.shape == (3, 13)
    assert float(f0.min()) >= 60.0 and float(f0.max()) <= 400.0
    assert float(prob.min()) > 0 and float(prob.max()) < 1


def toy_set(batch: int = 8, frames: int = 40, seed: int = 0):
    """Mels whose first channel encodes log-F0 and second channel voicing (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    octave = torch.rand(batch, frames, generator=g) * math.log2(400 / 60)
    voiced = torch.rand(batch, frames, generator=g) > 0.4
    f0 = torch.where(voiced, 60.0 * torch.exp2(octave), torch.zeros(()))
    mel = 0.05 * torch.randn(batch, N_MELS, frames, generator=g)
    mel[:, 0] += octave
    mel[:, 1] += voiced.float() * 2 - 1
    return mel, f0


def test_it_fits_a_tiny_labelled_set():
    torch.manual_seed(0)
    predictor = PitchPredictor(N_MELS, channels=16, fmin=60.0, fmax=400.0)
    mel, f0 = toy_set()
    optimizer = torch.optim.Adam(predictor.parameters(), lr=1e-2)
    before = pitch_metrics(predictor, *toy_set(seed=1))
    losses = []
    for _ in range(60):
        loss, _ = pitch_loss(predictor, mel, f0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    metrics = pitch_metrics(predictor, *toy_set(seed=1))
    assert metrics["voicing_accuracy"] > 0.9
    assert metrics["pitch_cents"] < 0.5 * before["pitch_cents"]


def test_metrics_are_exact_on_a_known_prediction():
    predictor = PitchPredictor(N_MELS, channels=4, fmin=50.0, fmax=800.0)
    with torch.no_grad():  # constant output: sigmoid(0) * 4 octaves = 200 Hz, voiced
        for p in predictor.parameters():
            p.zero_()
        predictor.out.bias[1] = 5.0
    mel = torch.zeros(1, N_MELS, 4)
    f0 = torch.tensor([[200.0, 400.0, 0.0, 100.0]])
    metrics = pitch_metrics(predictor, mel, f0)
    assert metrics["pitch_cents"] == pytest.approx((0 + 1200 + 1200) / 3, rel=1e-5)
    assert metrics["voicing_accuracy"] == pytest.approx(0.75)


def teacher_with_source():
    from wavedistill.models.teacher import WaveNetTeacher

    cfg = config_from_dict(
        {
            "audio": {"hop_length": 8, "n_mels": N_MELS},
            "data": {"segment_length": 64},
            "teacher": {
                "layers": 2,
                "stacks": 1,
                "residual_channels": 4,
                "gate_channels": 6,
                "skip_channels": 5,
                "num_mixtures": 2,
                "upsample_factors": [2, 4],
                "source": "harmonic",
                "pitch_channels": 8,
            },
        }
    )
    torch.manual_seed(0)
    return WaveNetTeacher.from_config(cfg)


def test_the_teachers_objective_adds_the_pitch_loss_and_reports_its_metrics():
    from wavedistill.objectives.likelihood import MaximumLikelihood

    teacher = teacher_with_source()
    mel, f0 = toy_set(batch=2, frames=8)
    batch = {"audio": 0.1 * torch.randn(2, 64), "mel": mel, "f0": f0}
    plain, _ = MaximumLikelihood(pitch_weight=0.0).loss(teacher, batch)
    loss, logs = MaximumLikelihood(pitch_weight=2.0).loss(teacher, batch)
    aux, _ = pitch_loss(teacher.excitation.predictor, mel, f0)
    torch.testing.assert_close(loss, plain + 2.0 * aux)
    assert {"nll_bits", "pitch_l1_octaves", "voicing_bce"} <= set(logs)
    loss.backward()
    assert teacher.excitation.predictor.out.weight.grad.abs().sum() > 0
    metrics = MaximumLikelihood().validate(teacher, batch)
    assert list(metrics)[0] == "nll_bits"  # still the value that selects best.pt
    assert {"pitch_cents", "voicing_accuracy"} <= set(metrics)
    with pytest.raises(UserError, match="data.pitch=true"):
        MaximumLikelihood().loss(teacher, {"audio": batch["audio"], "mel": mel})
