"""Both training objectives are what the trainer takes: an :class:`Objective`.

The structural match is also checked statically: ``mypy`` (``make lint``) sees both objectives
passed to ``Trainer(..., objective: Objective, ...)`` in ``wavedistill/training/runs.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from wavedistill.config import config_from_dict
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.base import Objective, bare_model
from wavedistill.objectives.distillation import Distillation
from wavedistill.objectives.likelihood import MaximumLikelihood

TINY = {
    "audio": {"sample_rate": 16000, "n_fft": 256, "hop_length": 64, "win_length": 256, "n_mels": 8},
    "data": {"segment_length": 512, "batch_size": 2},
    "teacher": {
        "layers": 2,
        "stacks": 1,
        "residual_channels": 4,
        "gate_channels": 8,
        "skip_channels": 4,
        "num_mixtures": 2,
    },
    "student": {"flow_layers": [2, 1], "channels": 4, "dilation_cycle": 2},
    "distill": {
        "num_draws": 4,
        "power_fft_sizes": [128],
        "power_hop_sizes": [32],
        "power_win_lengths": [128],
    },
}


def tiny_config():
    return config_from_dict(copy.deepcopy(TINY))


def batch_for(cfg, frames=8):
    g = torch.Generator().manual_seed(0)
    T = frames * cfg.audio.hop_length
    return {
        "audio": 0.1 * torch.randn(2, T, generator=g),
        "mel": torch.randn(2, cfg.audio.n_mels, frames, generator=g),
    }


def objectives():
    cfg = tiny_config()
    torch.manual_seed(0)
    teacher, student = WaveNetTeacher.from_config(cfg), IAFStudent.from_config(cfg)
    return (
        cfg,
        teacher,
        student,
        {"teacher": MaximumLikelihood(media_samples=128), "student": Distillation(teacher, cfg)},
    )


def test_both_objectives_are_objectives():
    _, _, _, found = objectives()
    for objective in found.values():
        assert isinstance(objective, Objective)
    assert not isinstance(object(), Objective)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_valid_metric_names_a_validation_value(kind):
    cfg, teacher, student, found = objectives()
    model = teacher if kind == "teacher" else student
    values = found[kind].validate(model, batch_for(cfg))
    assert found[kind].valid_metric in values


def test_an_objective_refuses_the_other_kind_of_model():
    cfg, teacher, student, found = objectives()
    with pytest.raises(TypeError, match="expected a WaveNetTeacher, got IAFStudent"):
        found["teacher"].loss(student, batch_for(cfg))
    with pytest.raises(TypeError, match="expected a IAFStudent, got WaveNetTeacher"):
        found["student"].log_media(teacher, batch_for(cfg))


def test_bare_model_looks_inside_a_module_wrapper():
    cfg = tiny_config()
    torch.manual_seed(0)
    teacher = WaveNetTeacher.from_config(cfg)
    wrapper = torch.nn.Module()
    wrapper.module = teacher
    assert bare_model(wrapper, WaveNetTeacher) is teacher
    assert bare_model(teacher, WaveNetTeacher) is teacher
    with pytest.raises(TypeError):
        bare_model(teacher, IAFStudent)
