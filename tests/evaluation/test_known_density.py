"""Trained models scored against sources of known density: the student's KL from its exact
log-density, the teacher's gap and its paired estimate."""

import math

import numpy as np
import pytest
import torch

from wavedistill.config import config_to_dict, load_config
from wavedistill.data.features import FeatureStats
from wavedistill.data.synthetic_sources import (
    NUM_FEATURES,
    conditional_log_densities,
    load_sources,
    make_synthetic,
)
from wavedistill.evaluation.known_density import student_kl, teacher_gap
from wavedistill.store.checkpoint import save_checkpoint
from wavedistill.store.loading import new_model


def save_untrained(path, kind, cfg, folder):
    """A checkpoint of a freshly initialised ``kind`` model on ``folder``'s features."""
    import torch

    torch.manual_seed(0)
    model = new_model(kind, cfg)
    stats = FeatureStats.load(folder / "stats.npz")
    save_checkpoint(
        path,
        {
            "kind": kind,
            "config": config_to_dict(cfg),
            "stats": stats.to_dict(),
            "model": model.state_dict(),
        },
    )
    return model, stats


TINY_MODELS = {
    "teacher": {
        "output": "gaussian",
        "layers": 2,
        "stacks": 1,
        "residual_channels": 4,
        "gate_channels": 8,
        "skip_channels": 4,
    },
    "student": {"flow_layers": [2], "channels": 4, "dilation_cycle": 2, "noise": "gaussian"},
}


def test_student_kl_uses_the_exact_density_the_students_inverse_gives(tmp_path):
    folder = tmp_path / "ar"
    make_synthetic("ar", folder, 0.5, 2, seed=0)
    cfg = load_config(
        overrides=[
            f"audio.n_mels={NUM_FEATURES}",
            *(f"student.{k}={v}" for k, v in TINY_MODELS["student"].items()),
        ]
    )
    student, stats = save_untrained(tmp_path / "s.pt", "student", cfg, folder)
    result = student_kl(tmp_path / "s.pt", folder, segments=3, seconds=0.025, seed=5)
    # the same samples again, scored through the sequential inverse instead of the noise
    sources = load_sources(folder)
    mel = stats.normalize(torch.from_numpy(np.load(folder / "mel" / "ar-0000.npy")[:, :2]))
    z = student.sample_noise((3, 400), torch.Generator().manual_seed(5))
    with torch.no_grad():
        x, _, _ = student(z, mel[None].expand(3, -1, -1))
    log_q = student.log_prob(x, mel[None].expand(3, -1, -1)).double().numpy()
    p = sources["ar-0000"].order
    per_segment = [
        np.mean(log_q[i, p:] - conditional_log_densities(x[i].double().numpy(), sources["ar-0000"]))
        for i in range(3)
    ]
    assert result["gap"] == pytest.approx(np.mean(per_segment), rel=1e-4)
    assert result["gap"] > 1.0 and 0 < result["stderr"] < result["gap"]


def test_teacher_gap_agrees_with_its_paired_estimate_of_the_kl(tmp_path):
    folder = tmp_path / "ar"
    make_synthetic("ar", folder, 0.5, 2, seed=0)
    cfg = load_config(
        overrides=[
            f"audio.n_mels={NUM_FEATURES}",
            *(f"teacher.{k}={v}" for k, v in TINY_MODELS["teacher"].items()),
        ]
    )
    save_untrained(tmp_path / "t.pt", "teacher", cfg, folder)
    r = teacher_gap(tmp_path / "t.pt", folder, block=1000)
    # an untrained teacher is far from the source; both estimates say so, and differ only by
    # the noise of -log p(x_t | x_<t) around the entropy rate (std ~0.7 nats per sample)
    assert r["gap"] > 1.0 and r["paired_kl"] > 1.0
    assert abs(r["gap"] - r["paired_kl"]) < 4 * 0.72 / math.sqrt(r["samples"])
    assert r["samples"] == 14 * 1000
